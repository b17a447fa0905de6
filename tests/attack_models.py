"""Fixed tiny models for the APGD / Square / AutoAttack tests (no training: random weights).

Every model is a 2-layer tanh MLP on ``[B, D]`` points in ``[0, 1]^D``; the labels are the
model's own clean predictions with the first ``NUM_WRONG`` examples made wrong, so clean
accuracy is ``1 - NUM_WRONG / B`` and every attack has something to break. Functions are
cached so that the same (hashable) ``logits_fn`` object reaches the jit caches.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

B, D, HIDDEN = 32, 8, 16
NUM_WRONG = 2
HEADS = ("softmax3", "softmax2", "softmax5", "binary", "binary1", "multilabel")


def data(seed: int = 0, n: int = B) -> np.ndarray:
    return np.random.default_rng(seed).uniform(size=(n, D)).astype(np.float32)


def _params(outputs: int, seed: int):
    rng = np.random.default_rng(seed)
    w1 = rng.normal(size=(D, HIDDEN)).astype(np.float32) * 1.5
    b1 = rng.normal(size=HIDDEN).astype(np.float32) * 0.5
    w2 = rng.normal(size=(HIDDEN, outputs)).astype(np.float32) * 1.5
    return w1, b1, w2


def _features(x, w1, b1, transform):
    return jnp.tanh((transform(x) - 0.5) @ w1 + b1)


@functools.cache
def model(head: str, transform: str = "none"):
    """``(logits_fn, outputs)`` for a head name in ``HEADS``.

    ``transform``: ``"none"``; ``"round"`` quantises the input to ``round(4 x) / 4`` (zero
    gradient almost everywhere); ``"stop"`` stops the gradient at the input. Both mask the
    gradient without changing much what the model computes.
    """
    outputs = {"softmax3": 3, "softmax2": 2, "softmax5": 5, "binary": 1, "binary1": 1}.get(head, 3)
    w1, b1, w2 = _params(outputs, seed=outputs + 10 * len(head))
    w2 = w2 - w2.mean(axis=1, keepdims=True) if outputs > 1 and head != "multilabel" else w2
    fns = {
        "none": lambda x: x,
        "round": lambda x: jnp.round(4.0 * x) / 4.0,
        "stop": jax.lax.stop_gradient,
    }
    t = fns[transform]
    if head == "binary":
        return jax.jit(lambda x: (_features(x, w1, b1, t) @ w2)[:, 0])
    return jax.jit(lambda x: _features(x, w1, b1, t) @ w2)


def labels(head: str, x: np.ndarray) -> np.ndarray:
    """Labels the plain model gets right except on the first ``NUM_WRONG`` examples."""
    z = np.asarray(model(head)(x))
    if head.startswith("softmax"):
        y = np.argmax(z, axis=-1).astype(np.int32)
        y[:NUM_WRONG] = (y[:NUM_WRONG] + 1) % z.shape[-1]
        return y
    if head == "multilabel":
        y = (z > 0).astype(np.float32)
        y[:NUM_WRONG, 0] = 1.0 - y[:NUM_WRONG, 0]
        return y
    y = (z.reshape(len(x)) > 0).astype(np.int32)
    y[:NUM_WRONG] = 1 - y[:NUM_WRONG]
    return y


def norms(delta: np.ndarray, norm: str) -> np.ndarray:
    flat = np.asarray(delta).reshape(len(delta), -1)
    return np.abs(flat).max(1) if norm == "linf" else np.linalg.norm(flat, axis=1)
