"""Linear classifiers whose minimal adversarial distances are known in closed form.

For an affine boundary function ``g(x) = <v, x> + c`` the lp-distance from ``x`` to the
halfspace ``g > 0`` is ``|g(x)| / ||v||_q`` (q dual to p), reached at the step
``d*`` below; a linear classifier misclassifies ``x`` exactly in the union of the
halfspaces ``{g_j > 0}`` (softmax: ``z_j > z_y``; one logit: the sign flips; multi-label:
one label flips), so the minimal distance is the smallest of those. Without bounds that
is the answer; inside the box ``[0, 1]^D`` it is the answer wherever ``x + d*`` stays in
the box (``in_box``), and a lower bound elsewhere.
"""

import numpy as np

D = 8
DUAL_ORD = {"linf": 1, "l2": 2, "l1": np.inf}
HEADS = ("binary", "binary1", "softmax2", "softmax4", "multilabel")


def points(n: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.3, 0.7, size=(n, D)).astype(np.float32)


def head(kind: str, seed: int = 0):
    """``(logits_fn, W [D, M], b [M])`` of a linear head centred on ``x = 0.5``."""
    rng = np.random.default_rng(100 + seed)
    outputs = {"binary": 1, "binary1": 1, "softmax2": 2, "softmax4": 4, "multilabel": 3}[kind]
    w = rng.normal(size=(D, outputs)).astype(np.float32)
    b = (-0.5 * w.sum(0) + 0.1 * rng.normal(size=outputs)).astype(np.float32)
    if kind == "binary":
        return (lambda x: x @ w[:, 0] + b[0]), w, b
    return (lambda x: x @ w + b), w, b


def equal_norm_softmax(k: int = 3, scale: float = 2.0, seed: int = 0):
    """Softmax head ``z = scale * x[:, :k] + x @ v``: every ``w_j - w_y`` has the same norms.

    So the nearest boundary is always the one of the highest other logit (the class FMN's
    margin loss follows).
    """
    v = np.random.default_rng(200 + seed).normal(size=(D, 1)).astype(np.float32)
    w = (scale * np.eye(D, k) + v).astype(np.float32)
    return (lambda x: x @ w), w, np.zeros(k, np.float32)


def labels(kind: str, logits: np.ndarray) -> np.ndarray:
    """The clean predictions (every example correct)."""
    z = np.asarray(logits)
    if kind.startswith("softmax"):
        return np.argmax(z, -1).astype(np.int32)
    if kind == "multilabel":
        return (z > 0).astype(np.float32)
    return (z.reshape(len(z)) > 0).astype(np.int32)


def boundaries(kind: str, w: np.ndarray, b: np.ndarray, x: np.ndarray, y: np.ndarray):
    """``(g [B, M], v [B, M, D])``: the affine boundary functions ``g_j = <v_j, x> + c_j``."""
    z = x @ w + b
    if kind.startswith("softmax"):
        v = w.T[None] - w.T[y][:, None]  # [B, K, D]
        g = z - z[np.arange(len(x)), y][:, None]
        g[np.arange(len(x)), y] = -np.inf  # not a boundary
        return g, v
    sign = -(2.0 * y.reshape(len(x), -1) - 1.0)
    return sign * z.reshape(len(x), -1), sign[:, :, None] * w.T[None]


def step_to(v: np.ndarray, g: np.ndarray, norm: str) -> np.ndarray:
    """The minimal step ``d*`` onto ``<v, d> = -g`` (unbounded), ``[D]``."""
    if norm == "l2":
        return -g * v / np.dot(v, v)
    if norm == "linf":
        return -g * np.sign(v) / np.abs(v).sum()
    d = np.zeros_like(v)
    k = np.argmax(np.abs(v))
    d[k] = -g / v[k]
    return d


def true_distances(kind: str, w, b, x, y, norm: str) -> tuple[np.ndarray, np.ndarray]:
    """``(distance [B], in_box [B])``: the exact minimal distance and whether its step
    stays in ``[0, 1]^D`` (so the bounded problem has the same answer)."""
    g, v = boundaries(kind, w, b, x, y)
    ratio = np.abs(g) / np.linalg.norm(v, DUAL_ORD[norm], axis=-1)
    ratio[~np.isfinite(g)] = np.inf
    j = np.argmin(ratio, axis=1)
    rows = np.arange(len(x))
    d = np.stack([step_to(v[i, j[i]], g[i, j[i]], norm) for i in rows])
    end = x + d
    return ratio[rows, j], np.all((end >= 0) & (end <= 1), axis=1)
