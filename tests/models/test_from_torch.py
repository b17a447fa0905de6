"""A PyTorch module through torchax as arjax's ModelFns (issue 34): equal to torch's numbers.

Logits, input and parameter gradients against torch's own (float32, 1e-5) for a
ResNet-18 and a small custom module with BatchNorm and dropout; an arjax SGD step
against a PyTorch SGD step; the exported state_dict back in the original module.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchax")

from torch_nets import SmallNet, resnet18  # noqa: E402

from arjax import methods, parallel  # noqa: E402
from arjax.evaluation.interpret import class_activation_maps  # noqa: E402
from arjax.models import from_torch, torch_state_dict  # noqa: E402
from arjax.models.torch_bridge import save_state_dict  # noqa: E402
from arjax.training.checkpoint import Checkpointer  # noqa: E402
from arjax.training.state import create_train_state  # noqa: E402
from arjax.training.step import compile_multi_step, make_train_step  # noqa: E402

TOL = dict(rtol=1e-5, atol=1e-5)


def _images(n, size=32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.0, 1.0, (n, size, size, 3)).astype(np.float32)
    return x, rng.integers(0, 3, n).astype(np.int32)


def _nchw(x):
    return torch.tensor(np.asarray(x)).permute(0, 3, 1, 2).contiguous()


def _flat(state, group):
    return {k: np.asarray(v.get_value()) for k, v in state[group].items()}


def _small(seed=0, **kw):
    torch.manual_seed(seed)
    return SmallNet(**kw)


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    net = resnet18(num_classes=10)
    return net, from_torch(net, torch.zeros(2, 3, 32, 32), features="layer4")


def test_resnet18_logits_input_and_parameter_gradients_equal_torch(resnet):
    net, model = resnet
    x, y = _images(4)

    def loss(params, x):
        logits = model.fns.logits_fn(params, model.batch_stats)(x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), logits

    (_, logits), (g_params, g_x) = jax.jit(jax.value_and_grad(loss, (0, 1), has_aux=True))(
        model.params, x
    )
    net.eval()
    xt = _nchw(x).requires_grad_(True)
    ref = net(xt)
    torch.nn.functional.cross_entropy(ref, torch.tensor(y, dtype=torch.long)).backward()
    np.testing.assert_allclose(logits, ref.detach().numpy(), **TOL)
    np.testing.assert_allclose(g_x, xt.grad.permute(0, 2, 3, 1).numpy(), **TOL)
    grads = _flat(g_params, "params")
    assert set(grads) == {n for n, p in net.named_parameters()}
    for name, p in net.named_parameters():
        np.testing.assert_allclose(grads[name], p.grad.numpy(), err_msg=name, **TOL)
    net.zero_grad()


def test_resnet18_sgd_step_equals_a_pytorch_sgd_step(resnet):
    net, model = resnet
    x, y = _images(8, seed=1)
    tx = optax.sgd(0.1)
    loss = methods.make_loss(methods.Standard(), model.fns, None)
    state = create_train_state(model.params, model.batch_stats, tx, seed=0)
    batch = {"image": jnp.asarray(x), "label": jnp.asarray(y), "index": jnp.arange(8)}
    state, _ = jax.jit(make_train_step(loss, tx))(state, batch)

    ref = resnet18(num_classes=10)
    ref.load_state_dict(net.state_dict())
    ref.train()
    opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    torch.nn.functional.cross_entropy(ref(_nchw(x)), torch.tensor(y, dtype=torch.long)).backward()
    opt.step()
    params, buffers = _flat(state.params, "params"), _flat(state.batch_stats, "buffers")
    for name, value in ref.state_dict().items():
        got = params[name] if name in params else buffers[name]
        np.testing.assert_allclose(got, value.numpy(), err_msg=name, **TOL)
    assert int(buffers["bn1.num_batches_tracked"]) == 1


def test_small_module_eval_train_and_batchnorm_statistics_equal_torch():
    net = _small(dropout=0.0)
    model = from_torch(net, torch.zeros(2, 3, 8, 8))
    x, _ = _images(6, size=8)
    net.eval()
    np.testing.assert_allclose(model.logits_fn()(x), net(_nchw(x)).detach().numpy(), **TOL)
    logits, _, stats = jax.jit(lambda p, b, v: model.fns.apply(p, b, v, train=True))(
        model.params, model.batch_stats, x
    )
    net.train()
    np.testing.assert_allclose(logits, net(_nchw(x)).detach().numpy(), **TOL)
    got = _flat(stats, "buffers")
    for name, value in net.named_buffers():  # running mean, unbiased running var, count
        np.testing.assert_allclose(got[name], value.numpy(), err_msg=name, **TOL)
    # integer buffers live in batch_stats, never among the differentiated parameters
    assert "bn.num_batches_tracked" not in _flat(model.params, "params")
    assert got["bn.num_batches_tracked"].dtype.kind == "i"


def test_dropout_draws_from_arjax_rng_and_is_off_in_eval():
    net = _small(dropout=0.5)
    model = from_torch(net, torch.zeros(2, 3, 8, 8), features="penultimate")
    x, _ = _images(32, size=8)
    apply = jax.jit(
        lambda b, train: model.fns.apply(model.params, b, x, train=train), static_argnums=1
    )
    _, clean, _ = apply(model.batch_stats, False)
    net.eval()
    h = torch.relu(net.bn(net.conv(_nchw(x)))).mean((2, 3)).detach().numpy()
    np.testing.assert_allclose(clean, h, **TOL)  # eval: no dropout, the fc input
    _, d1, s1 = apply(model.batch_stats, True)
    _, d2, _ = apply(s1, True)
    _, d1_again, _ = apply(model.batch_stats, True)
    np.testing.assert_array_equal(d1, d1_again)  # same rng state, same mask
    assert not np.array_equal(d1 == 0, d2 == 0)  # the threaded state draws a new mask
    dropped = np.asarray(d1) == 0
    assert 0.4 < dropped.mean() < 0.6
    # kept units are scaled by 1 / (1 - p), as torch's dropout; BN uses batch statistics
    net.train()
    h_batch = torch.relu(net.bn(net.conv(_nchw(x)))).mean((2, 3)).detach().numpy()
    np.testing.assert_allclose(np.where(dropped, 0.0, 2.0 * h_batch), d1, **TOL)
    counts = [v for p, v in jax.tree_util.tree_leaves_with_path(s1) if "count" in str(p)]
    assert [int(c) for c in counts] == [1]


def test_bfloat16_runs_the_module_in_bfloat16_and_keeps_float32_state():
    net = _small(dropout=0.0)
    f32 = from_torch(net, torch.zeros(2, 3, 8, 8))
    bf16 = from_torch(net, torch.zeros(2, 3, 8, 8), dtype="bfloat16")
    x, _ = _images(8, size=8)
    ref, low = f32.logits_fn()(x), bf16.logits_fn()(x)
    assert low.dtype == jnp.float32
    assert 0 < float(jnp.max(jnp.abs(low - ref))) < 0.05 * float(jnp.max(jnp.abs(ref)))
    _, _, stats = bf16.fns.apply(bf16.params, bf16.batch_stats, x, train=True)
    dtypes = {k: v.dtype for k, v in _flat(stats, "buffers").items()}
    assert dtypes["bn.running_mean"] == np.float32 and dtypes["bn.num_batches_tracked"].kind == "i"


def test_exported_state_dict_loads_into_the_module_and_reproduces_arjax(tmp_path):
    net = _small(dropout=0.3)
    model = from_torch(net, torch.zeros(2, 3, 8, 8))
    x, y = _images(16, size=8)
    tx = optax.adam(1e-2)
    loss = methods.make_loss(methods.Standard(), model.fns, None)
    state = create_train_state(model.params, model.batch_stats, tx, seed=0)
    step = jax.jit(make_train_step(loss, tx))
    for _ in range(3):
        state, _ = step(state, {"image": x, "label": y, "index": jnp.arange(16)})
    exported = torch_state_dict(model.fns, state.params, state.batch_stats)
    assert {k: v.dtype for k, v in exported.items()} == {
        k: v.numpy().dtype for k, v in net.state_dict().items()
    }
    path = str(tmp_path / "w.safetensors")
    save_state_dict(path, exported)
    from safetensors.torch import load_file

    fresh = SmallNet(dropout=0.3)
    fresh.load_state_dict(load_file(path))  # strict: every key, right shapes and dtypes
    fresh.eval()
    trained = model.fns.logits_fn(state.params, state.batch_stats)(x)
    np.testing.assert_allclose(fresh(_nchw(x)).detach().numpy(), trained, **TOL)
    assert int(fresh.bn.num_batches_tracked) == 3


def test_feature_map_is_channels_last_and_gives_cams():
    net = _small(dropout=0.2)
    model = from_torch(net, torch.zeros(2, 3, 8, 8), features="act")
    x, _ = _images(4, size=8)
    logits, feats, _ = model.fns.apply(model.params, model.batch_stats, x)
    net.eval()
    fmap = torch.relu(net.bn(net.conv(_nchw(x)))).permute(0, 2, 3, 1).detach().numpy()
    np.testing.assert_allclose(feats, fmap, **TOL)
    cams, cam_logits = class_activation_maps(
        model.fns, model.params, model.batch_stats, x, with_logits=True
    )
    assert cams.shape == (4, 8, 8, 3)
    bias = net.fc.bias.detach().numpy()
    np.testing.assert_allclose(cams.mean((1, 2)) + bias, cam_logits, **TOL)


def test_methods_attacks_and_autoattack_run_on_a_torch_model():
    import arjax
    from arjax.evaluation.autoattack_eval import autoattack

    model = from_torch(_small(dropout=0.2), torch.zeros(2, 3, 8, 8), features="penultimate")
    x, y = _images(8, size=8)
    batch = {"image": jnp.asarray(x), "label": jnp.asarray(y), "index": jnp.arange(8)}
    for name in ("arfl", "trades"):
        method = methods.from_config({"name": name})
        loss = methods.make_loss(method, model.fns, bounds=(0.0, 1.0))
        value, _ = jax.jit(loss)(model.params, model.batch_stats, batch, None, jax.random.key(0))
        assert np.isfinite(float(value))
    f = model.logits_fn()
    x_adv = jax.jit(lambda v: arjax.attacks.pgd(f, v, y, jax.random.key(1), eps=0.1))(x)
    assert float(jnp.max(jnp.abs(x_adv - x))) <= 0.1 + 1e-6
    ce = lambda v: optax.softmax_cross_entropy_with_integer_labels(f(v), y).mean()  # noqa: E731
    assert float(ce(x_adv)) > float(ce(x))
    result = autoattack(f, x, y, jax.random.key(2), 0.1, version="fast", num_steps=3, num_queries=5)
    assert result.robust_accuracy <= result.clean_accuracy


def test_data_parallel_step_on_8_devices_equals_1_and_checkpoints(tmp_path):
    x, y = _images(16, size=8, seed=3)
    batch = {"image": x.reshape(2, 8, 8, 8, 3), "label": y.reshape(2, 8), "index": np.zeros((2, 8))}
    results = []
    for n in (1, 8):
        model = from_torch(_small(dropout=0.3), torch.zeros(2, 3, 8, 8))
        tx = optax.sgd(0.1)
        loss = methods.make_loss(methods.Standard(), model.fns, None)
        step = compile_multi_step(loss, tx, parallel.make_mesh(n))
        state = create_train_state(model.params, model.batch_stats, tx, seed=0)
        state, metrics = step(state, batch, jnp.ones(2, bool))
        results.append(jax.tree.map(np.asarray, (state.params, state.batch_stats["buffers"])))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TOL), *results)
    ckpt = Checkpointer(str(tmp_path / "checkpoints"))
    ckpt.save(state)
    ckpt.manager.wait_until_finished()
    restored = ckpt.restore(state)
    jax.tree.map(np.testing.assert_array_equal, restored.params, state.params)
    assert int(_flat(restored.batch_stats, "buffers")["bn.num_batches_tracked"]) == 2


def test_bad_modules_and_arguments_are_named():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        from_torch(lambda v: v, np.zeros((1, 3, 8, 8), np.float32))
    with pytest.raises(ValueError, match=r"'layer9'.*valid.*'conv'"):
        from_torch(_small(), torch.zeros(2, 3, 8, 8), features="layer9")
    net = _small()
    net.bn.momentum = None
    with pytest.raises(ValueError, match="bn: BatchNorm momentum=None"):
        from_torch(net, torch.zeros(2, 3, 8, 8))
    conv = torch.nn.Conv2d(3, 4, 3)
    with pytest.raises(ValueError, match=r"logits \[B, K\]"):
        from_torch(conv, torch.zeros(2, 3, 8, 8))
    with pytest.raises(ValueError, match="input_norm"):
        from_torch(_small(), torch.zeros(2, 3, 8, 8), input_norm="cifar")
    model = from_torch(_small(), torch.zeros(2, 3, 8, 8), features="penultimate")
    with pytest.raises(ValueError, match="CAM needs"):
        class_activation_maps(model.fns, model.params, model.batch_stats, _images(2, 8)[0])


class _Tied(torch.nn.Module):
    """An encoder and a decoder sharing one weight (as tied embeddings), plus a frozen scale."""

    def __init__(self):
        super().__init__()
        self.enc = torch.nn.Linear(4, 6, bias=False)
        self.dec = torch.nn.Linear(6, 4, bias=False)
        self.dec.weight = self.enc.weight  # tied ([6, 4]; the forward uses it transposed)
        self.out = torch.nn.Linear(4, 3)
        self.out.bias.requires_grad_(False)

    def forward(self, x):
        h = torch.relu(x @ self.enc.weight.T)
        return self.out(h @ self.dec.weight)


def test_tied_and_frozen_parameters_train_once_and_export_every_key():
    torch.manual_seed(0)
    net = _Tied()
    model = from_torch(net, torch.zeros(2, 4), channels_last=False)
    assert sorted(model.params["params"]) == ["enc.weight", "out.weight"]  # one tied copy
    assert "out.bias" in model.batch_stats["buffers"]  # frozen: never differentiated
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    np.testing.assert_allclose(model.logits_fn()(x), net(torch.tensor(x)).detach().numpy(), **TOL)
    exported = model.state_dict()
    assert set(exported) == set(net.state_dict())  # enc.weight and dec.weight both written
    np.testing.assert_array_equal(exported["enc.weight"], exported["dec.weight"])
