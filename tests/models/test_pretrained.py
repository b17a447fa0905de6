"""torchvision weight import: name map, layouts, strict accounting, PyTorch equivalence.

The state dicts are produced by our own exporter (torchvision names and
layouts) and perturbed, so no weights are downloaded. Where PyTorch is
installed, the full-width imported networks are also compared with
``torch.nn.functional`` run on the very same state dict; without PyTorch,
``test_torchvision_fixtures.py`` checks the import against torchvision's own
stored outputs and names (``tests/fixtures/``).
"""

import functools
import sys

import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import save_file

from arjax.models import (
    build_model,
    densenet,
    export_torchvision,
    import_torchvision,
    load_pretrained,
    load_state_dict,
    resnet,
    split_model,
    vgg16,
)
from arjax.models.vgg import VGG16_CONFIG

BUILDERS = {
    "resnet18": lambda seed, **kw: resnet("resnet18", seed=seed, **kw),
    "resnet50_instance": lambda seed, **kw: resnet("resnet50", norm="instance", seed=seed, **kw),
    "densenet121": lambda seed, **kw: densenet("densenet121", seed=seed, **kw),
    "densenet121_truncated": lambda seed, **kw: densenet("densenet121_truncated", seed=seed, **kw),
    # torchvision's names and conv shapes; a narrow classifier keeps the file small
    "vgg16": lambda seed, **kw: vgg16(hidden=32, seed=seed, **kw),
}


@functools.cache
def _torchvision_like(name: str) -> dict:
    """A torchvision-format state dict with non-trivial values everywhere (BN stats too)."""
    sd = export_torchvision(BUILDERS[name](seed=100))
    rng = np.random.default_rng(7)
    for key, value in sd.items():
        if key.endswith("running_var"):
            sd[key] = rng.uniform(0.5, 2.0, value.shape).astype(np.float32)
        elif key.endswith(("running_mean", "bias")):
            sd[key] = (0.1 * rng.standard_normal(value.shape)).astype(np.float32)
        elif value.ndim == 1:  # norm weights
            sd[key] = rng.uniform(0.5, 1.5, value.shape).astype(np.float32)
        elif key.endswith("num_batches_tracked"):
            sd[key] = np.asarray(1234, np.int64)
    return sd


def _variables(model) -> dict:
    flat = nnx.to_flat_state(nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat)))
    return {"/".join(map(str, p)): np.asarray(v.get_value()) for p, v in flat}


def _same(a, b) -> bool:
    """Two models hold identical variables."""
    va, vb = _variables(a), _variables(b)
    return va.keys() == vb.keys() and all(np.array_equal(va[k], vb[k]) for k in va)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_safetensors_round_trip_is_the_identity(name, tmp_path):
    source = BUILDERS[name](seed=0)
    sd = export_torchvision(source)
    path = tmp_path / "weights.safetensors"
    save_file(sd, str(path))
    target = BUILDERS[name](seed=1)
    assert not _same(source, target)
    report = load_pretrained(target, path)
    assert _same(source, target)
    want = _variables(source)
    # each file tensor used once; only num_batches_tracked is left unused
    assert len(report.loaded) == len(want) and not report.skipped_head
    assert set(report.loaded) | set(report.dropped) == set(sd)
    assert all(k.endswith("num_batches_tracked") for k in report.dropped)
    assert export_torchvision(target).keys() == sd.keys()


def test_layouts_are_converted():
    sd = _torchvision_like("resnet18")
    model = resnet("resnet18", seed=1)
    import_torchvision(model, sd)
    np.testing.assert_array_equal(  # OIHW -> HWIO
        model.layer4[1].conv2.kernel[...], sd["layer4.1.conv2.weight"].transpose(2, 3, 1, 0)
    )
    np.testing.assert_array_equal(model.fc.kernel[...], sd["fc.weight"].T)  # [out,in] -> [in,out]
    np.testing.assert_array_equal(model.bn1.mean[...], sd["bn1.running_mean"])
    np.testing.assert_array_equal(
        model.layer2[0].downsample[1].scale[...], sd["layer2.0.downsample.1.weight"]
    )


def test_missing_unexpected_and_misshaped_tensors_are_named():
    sd = dict(_torchvision_like("resnet18"))
    model = resnet("resnet18", seed=1)
    missing = {k: v for k, v in sd.items() if k != "layer3.1.bn2.running_var"}
    with pytest.raises(ValueError, match=r"missing \['layer3.1.bn2.running_var'\]"):
        import_torchvision(model, missing)
    extra = {**sd, "layer5.0.conv1.weight": np.zeros((1,), np.float32)}
    with pytest.raises(ValueError, match=r"unexpected \['layer5.0.conv1.weight'\]"):
        import_torchvision(model, extra)
    bad = {**sd, "layer1.0.conv1.weight": np.zeros((64, 64, 1, 1), np.float32)}
    with pytest.raises(ValueError, match=r"layer1.0.conv1.weight: file \(1, 1, 64, 64\)"):
        import_torchvision(model, bad)
    # nothing was written by the failed imports
    fresh = resnet("resnet18", seed=1)
    assert _same(model, fresh)


def test_head_of_another_width_keeps_its_initialisation():
    sd = _torchvision_like("resnet18")
    model = resnet("resnet18", 14, seed=1)
    head = np.asarray(model.fc.kernel[...])
    report = import_torchvision(model, sd)
    assert set(report.skipped_head) == {"fc.weight", "fc.bias"}
    np.testing.assert_array_equal(model.fc.kernel[...], head)
    np.testing.assert_array_equal(model.conv1.kernel[...], sd["conv1.weight"].transpose(2, 3, 1, 0))
    with pytest.raises(ValueError, match="head='load'"):
        import_torchvision(resnet("resnet18", 14, seed=1), sd, head="load")
    same = resnet("resnet18", seed=1)
    assert import_torchvision(same, sd, head="skip").skipped_head
    assert not np.array_equal(same.fc.kernel[...], sd["fc.weight"].T)


def test_instance_norm_resnet_takes_affine_weights_and_drops_running_stats():
    sd = _torchvision_like("resnet18")  # a batch-norm checkpoint
    model = resnet("resnet18", norm="instance", seed=1)
    report = import_torchvision(model, sd)
    np.testing.assert_array_equal(model.layer3[1].bn2.scale[...], sd["layer3.1.bn2.weight"])
    np.testing.assert_array_equal(model.layer3[1].bn2.bias[...], sd["layer3.1.bn2.bias"])
    stats = {k for k in sd if k.rsplit(".", 1)[1] in ("running_mean", "running_var")}
    assert stats and stats <= set(report.dropped)
    assert set(report.loaded) | set(report.dropped) == set(sd)


def test_truncated_densenet_from_full_checkpoint():
    sd = _torchvision_like("densenet121")
    model = densenet("densenet121_truncated", 14, seed=1)
    report = import_torchvision(model, sd)
    # the final norm is transition2's BatchNorm: the norm of denseblock2's output
    np.testing.assert_array_equal(
        model.features["norm5"].var[...], sd["features.transition2.norm.running_var"]
    )
    assert "features.denseblock3.denselayer1.conv1.weight" in report.dropped
    assert "features.norm5.weight" in report.dropped
    assert "features.transition2.conv.weight" in report.dropped
    assert set(report.skipped_head) == {"classifier.weight", "classifier.bias"}
    assert set(report.loaded) | set(report.dropped) | set(report.skipped_head) == set(sd)


def test_old_densenet_names_are_accepted():
    sd = _torchvision_like("densenet121_truncated")
    old = {
        k.replace(".norm1.", ".norm.1.").replace(".conv2.", ".conv.2."): v for k, v in sd.items()
    }
    assert "features.denseblock1.denselayer1.norm.1.weight" in old
    model = densenet("densenet121_truncated", seed=1)
    import_torchvision(model, old)
    np.testing.assert_array_equal(
        model.features["denseblock2"].denselayer3.norm1.bias[...],
        sd["features.denseblock2.denselayer3.norm1.bias"],
    )


@functools.partial(jax.jit, static_argnums=0)
def _stem(graphdef, state, x):
    model = nnx.merge(graphdef, state)
    model.eval()
    return model.stem(x)


def test_grayscale_model_gets_the_summed_rgb_kernel():
    sd = _torchvision_like("resnet18")
    rgb = resnet("resnet18", input_norm="none", seed=1)
    gray = resnet("resnet18", in_channels=1, input_norm="none", seed=2)
    import_torchvision(rgb, sd)
    assert import_torchvision(gray, sd).summed_input_channels
    x = np.random.default_rng(0).uniform(size=(2, 32, 32, 1)).astype(np.float32)
    out_rgb = _stem(*nnx.split(rgb), np.repeat(x, 3, axis=-1))
    out_gray = _stem(*nnx.split(gray), x)
    np.testing.assert_allclose(out_gray, out_rgb, rtol=1e-4, atol=1e-5)


def test_build_model_loads_the_configured_file(tmp_path):
    sd = _torchvision_like("resnet18")
    path = tmp_path / "resnet18.safetensors"
    save_file(sd, str(path))
    cfg = ml_collections.ConfigDict(dict(name="resnet18", pretrained=str(path), num_outputs=0))
    _, params, stats = build_model(cfg, (32, 32, 3), 10, seed=0)
    np.testing.assert_array_equal(
        params["layer1"][0]["conv1"]["kernel"][...],
        sd["layer1.0.conv1.weight"].transpose(2, 3, 1, 0),
    )
    np.testing.assert_array_equal(stats["bn1"]["var"][...], sd["bn1.running_var"])
    assert params["fc"]["kernel"].shape == (512, 10)


def test_file_errors(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_state_dict(tmp_path / "absent.safetensors")
    odd = tmp_path / "w.npz"
    odd.write_bytes(b"")
    with pytest.raises(ValueError, match=r"\.safetensors, \.pth"):
        load_state_dict(odd)
    pth = tmp_path / "w.pth"
    pth.write_bytes(b"")
    monkeypatch.setitem(sys.modules, "torch", None)  # as if PyTorch were not installed
    with pytest.raises(ImportError, match="needs PyTorch"):
        load_state_dict(pth)


# --- equivalence with PyTorch on the same weights -----------------------------------------------


def _torch_reference():
    torch = pytest.importorskip("torch")
    return torch, torch.nn.functional


def _t(sd, torch):
    return {k: torch.from_numpy(np.array(v)) for k, v in sd.items()}


def _bn(F, x, w, p):
    return F.batch_norm(
        x, w[p + ".running_mean"], w[p + ".running_var"], w[p + ".weight"], w[p + ".bias"],
        training=False, eps=1e-5,
    )  # fmt: skip


def _nhwc(t):
    return t.permute(0, 2, 3, 1).numpy()


def _close(ours, ref):
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * float(np.abs(ref).max()))


def _forward(model, x):
    fns, params, stats = split_model(model)
    logits, feats, _ = jax.jit(fns.apply)(params, stats, x)
    return np.asarray(logits), np.asarray(feats)


def test_resnet18_matches_torch_functional():
    torch, F = _torch_reference()
    sd = _torchvision_like("resnet18")
    model = resnet("resnet18", input_norm="none", seed=1)
    import_torchvision(model, sd)
    w = _t(sd, torch)
    x = np.random.default_rng(1).uniform(size=(2, 32, 32, 3)).astype(np.float32)
    h = torch.from_numpy(x).permute(0, 3, 1, 2)
    h = F.max_pool2d(F.relu(_bn(F, F.conv2d(h, w["conv1.weight"], None, 2, 3), w, "bn1")), 3, 2, 1)
    stem = h
    for stage in range(1, 5):
        for b in range(2):
            p, s = f"layer{stage}.{b}", (2 if stage > 1 and b == 0 else 1)
            out = F.relu(_bn(F, F.conv2d(h, w[p + ".conv1.weight"], None, s, 1), w, p + ".bn1"))
            out = _bn(F, F.conv2d(out, w[p + ".conv2.weight"], None, 1, 1), w, p + ".bn2")
            if p + ".downsample.0.weight" in w:
                h = _bn(
                    F, F.conv2d(h, w[p + ".downsample.0.weight"], None, s), w, p + ".downsample.1"
                )
            h = F.relu(out + h)
    ref_logits = F.linear(h.mean((2, 3)), w["fc.weight"], w["fc.bias"])
    _close(np.asarray(_stem(*nnx.split(model), x)), _nhwc(stem))
    logits, feats = _forward(model, x)
    _close(feats, _nhwc(h))
    _close(logits, ref_logits.numpy())


def _torch_densenet(torch, F, w, x, blocks, final_norm):
    h = F.conv2d(torch.from_numpy(x).permute(0, 3, 1, 2), w["features.conv0.weight"], None, 2, 3)
    h = F.max_pool2d(F.relu(_bn(F, h, w, "features.norm0")), 3, 2, 1)
    stem = h
    for i, n in enumerate(blocks, 1):
        for j in range(1, n + 1):
            p = f"features.denseblock{i}.denselayer{j}"
            y = F.conv2d(F.relu(_bn(F, h, w, p + ".norm1")), w[p + ".conv1.weight"])
            y = F.conv2d(F.relu(_bn(F, y, w, p + ".norm2")), w[p + ".conv2.weight"], None, 1, 1)
            h = torch.cat([h, y], 1)
        if i < len(blocks):
            t = f"features.transition{i}"
            h = F.conv2d(F.relu(_bn(F, h, w, t + ".norm")), w[t + ".conv.weight"])
            h = F.avg_pool2d(h, 2, 2)
    h = F.relu(_bn(F, h, w, final_norm))
    return stem, h


def test_densenet_matches_torch_functional():
    torch, F = _torch_reference()
    sd = _torchvision_like("densenet121")
    w = _t(sd, torch)
    x = np.random.default_rng(2).uniform(size=(2, 32, 32, 3)).astype(np.float32)
    # full DenseNet-121: the first block (compiling the whole net takes ~30 s on 2 cores)
    full = densenet("densenet121", input_norm="none", seed=1)
    import_torchvision(full, sd)
    stem, _ = _torch_densenet(torch, F, w, x, (), "features.norm0")
    _close(np.asarray(_stem(*nnx.split(full), x)), _nhwc(stem))
    # truncated: the whole network, its final norm being transition2.norm
    trunc = densenet("densenet121_truncated", 5, input_norm="none", seed=1)
    import_torchvision(trunc, sd)  # the 1024-wide ImageNet head does not fit: kept
    _, h = _torch_densenet(torch, F, w, x, (6, 12), "features.transition2.norm")
    head = _t(export_torchvision(trunc), torch)
    ref_logits = F.linear(h.mean((2, 3)), head["classifier.weight"], head["classifier.bias"])
    logits, feats = _forward(trunc, x)
    _close(feats, _nhwc(h))
    _close(logits, ref_logits.numpy())


def test_vgg16_matches_torch_functional():
    torch, F = _torch_reference()
    sd = _torchvision_like("vgg16")
    w = _t(sd, torch)
    model = vgg16(hidden=32, input_norm="none", seed=1)
    import_torchvision(model, sd)
    x = np.random.default_rng(3).uniform(size=(2, 32, 32, 3)).astype(np.float32)
    h, index, features = torch.from_numpy(x).permute(0, 3, 1, 2), 0, None
    for item in VGG16_CONFIG:
        if item == "M":
            features, h, index = h, F.max_pool2d(h, 2, 2), index + 1
        else:
            p = f"features.{index}"
            h, index = F.relu(F.conv2d(h, w[p + ".weight"], w[p + ".bias"], 1, 1)), index + 2
    h = torch.flatten(F.adaptive_avg_pool2d(h, (7, 7)), 1)  # 1x1 -> 7x7, (C, H, W) order
    h = F.relu(F.linear(h, w["classifier.0.weight"], w["classifier.0.bias"]))
    h = F.relu(F.linear(h, w["classifier.3.weight"], w["classifier.3.bias"]))
    ref_logits = F.linear(h, w["classifier.6.weight"], w["classifier.6.bias"])
    logits, feats = _forward(model, x)
    _close(feats, _nhwc(features))
    _close(logits, ref_logits.numpy())


def test_pth_file_reads_like_safetensors(tmp_path):
    torch, _ = _torch_reference()
    sd = _torchvision_like("densenet121_truncated")
    torch.save(_t(sd, torch), tmp_path / "w.pth")
    save_file(sd, str(tmp_path / "w.safetensors"))
    a, b = load_state_dict(tmp_path / "w.pth"), load_state_dict(tmp_path / "w.safetensors")
    assert a.keys() == b.keys() == sd.keys()
    assert all(np.array_equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
    torch.save({"state_dict": {}, "epoch": 3}, tmp_path / "ckpt.pth")
    with pytest.raises(ValueError, match="not a flat state dict"):
        load_state_dict(tmp_path / "ckpt.pth")
