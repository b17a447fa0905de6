"""Small builders shared by tests."""

import os

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from arjax.experiment.presets import base_config
from arjax.models import split_model
from arjax.models.mlp import MLP


def linear_model(w, b):
    """A 'MLP' with no hidden layer: one binary logit ``x @ w + b``; features = x."""
    w = jnp.asarray(w, jnp.float32)
    model = MLP(w.shape[0], hidden=(), num_outputs=1, rngs=nnx.Rngs(0))
    model.head.kernel.value = w[:, None]
    model.head.bias.value = jnp.asarray([b], jnp.float32)
    return split_model(model)


def abstract_forward(model, shape):
    """``jax.eval_shape`` of ``model`` in eval mode on ``[shape]`` float32 inputs (no compute)."""
    graphdef, state = nnx.split(model)

    def run(st, x):
        m = nnx.merge(graphdef, st)
        m.eval()
        return m(x)

    return jax.eval_shape(run, state, jax.ShapeDtypeStruct(shape, jnp.float32))


def tiny_config(**train) -> ml_collections.ConfigDict:
    """A seconds-long two-moons config (used by end-to-end tests)."""
    from arjax.experiment.presets import method_config

    c = base_config()
    c.name = "tiny"
    c.data.sizes = dict(train=512, test=128)
    c.model.hidden = (8, 8)
    c.method = method_config("arfl", r=0.5, lam=0.5, attack="fgsm:linf:0.05")
    c.optim.learning_rate = 1e-2
    c.train.batch_size = 64
    c.train.num_epochs = 4
    c.train.steps_per_call = 4
    c.train.log_every = 4
    c.train.eval_every = 16
    c.train.checkpoint_every = 16
    c.eval.batch_size = 128
    c.eval.num_steps = 5
    c.eval.eps = (0.0, 0.1, 0.2)
    c.train.update(train)
    return c


def write_tiny_config(path) -> str:
    """Writes a config file whose ``get_config()`` is :func:`tiny_config`; returns its path."""
    tests = os.path.dirname(os.path.abspath(__file__))
    text = f"import sys\nsys.path.insert(0, {tests!r})\nfrom helpers import tiny_config\n\n"
    path.write_text(text + "\ndef get_config():\n    return tiny_config()\n")
    return str(path)


def preempt_after_save(monkeypatch, directory: str | None = None) -> None:
    """Makes the next ``loop.run`` act as if SIGTERM came right after a checkpoint save.

    Args:
      monkeypatch: pytest's fixture (``monkeypatch.undo()`` restores both patches).
      directory: only saves into this checkpoint folder trigger it (None: any save).
    """
    from arjax.experiment import train as loop
    from arjax.training import checkpoint

    flags = []
    original_save = checkpoint.Checkpointer.save

    class Flag(checkpoint.PreemptionFlag):
        def __init__(self):
            super().__init__()
            flags.append(self)

    def save_then_preempt(self, state, **kw):
        original_save(self, state, **kw)
        if directory is None or self.directory == str(directory):
            flags[-1].signal = "SIGTERM"
            flags[-1].event.set()

    monkeypatch.setattr(loop, "PreemptionFlag", Flag)
    monkeypatch.setattr(checkpoint.Checkpointer, "save", save_then_preempt)


def scan_body_sizes(jaxpr) -> list[int]:
    """Equation counts of every ``scan`` body in ``jaxpr`` (nested ones too)."""
    from jax.extend.core import jaxprs_in_params

    sizes = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "scan":
            sizes.append(len(eqn.params["jaxpr"].jaxpr.eqns))
        for sub in jaxprs_in_params(eqn.params):
            sizes += scan_body_sizes(sub)
    return sizes


# The moons MLP of the compiled-step tests (test_training, test_dsbn_mirst).
STEP_MODEL = dict(
    name="mlp", hidden=(16, 16), activation="leaky_relu", layer_norm=(True, True), num_outputs=2
)


def compiled_step_setup(method, num_devices, k=3, model=None):
    """A compiled ``k``-step train step of ``method`` on 256 moons points over a mesh.

    Args:
      method: a method, or a ``method`` config section (IMA's Δε derived for 10 epochs).
      num_devices: mesh size.
      k: steps per compiled call.
      model: a ``model`` config section (default ``STEP_MODEL``).

    Returns:
      ``(state, step, batches, calls)``: ``batches(start)`` stacks ``k`` sharded batches;
      ``calls["traces"]`` counts the traces of the loss.
    """
    import jax
    import numpy as np
    import optax

    from arjax import methods, parallel
    from arjax.data import moons_splits, train_dataset
    from arjax.models import build_model
    from arjax.training.state import create_train_state
    from arjax.training.step import compile_multi_step

    data = moons_splits({"train": 256}, 0.2, 0)["train"]
    model_cfg = ml_collections.ConfigDict(model or STEP_MODEL)
    fns, params, stats = build_model(model_cfg, (2,), 2, seed=0)
    tx = optax.adam(1e-2)
    mesh = parallel.make_mesh(num_devices)
    if not isinstance(method, methods.Method):
        method = methods.from_config(method, num_epochs=10)
    state = create_train_state(params, stats, tx, seed=0, method_state=method.init_state(256))
    state = parallel.put_replicated(state, mesh)
    calls = {"traces": 0}
    loss = methods.make_loss(method, fns, None)

    def counting_loss(*args):
        calls["traces"] += 1
        return loss(*args)

    step = compile_multi_step(counting_loss, tx, mesh)
    ds = train_dataset(data, batch_size=64, seed=0)
    sharding = parallel.batch_sharding(mesh, leading_axes=2)

    def batches(start):
        host = [ds[s] for s in range(start, start + k)]
        return parallel.put_batch(jax.tree.map(lambda *a: np.stack(a), *host), sharding)

    return state, step, batches, calls
