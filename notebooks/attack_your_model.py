# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Attack your own Flax NNX classifier
#
# arjax's attacks are pure functions of a `logits_fn(images [B, ...]) -> logits [B, K]`
# closure (DESIGN §3.2): any model you can call is attackable. This notebook
#
# 1. defines and trains a tiny NNX CNN (with batch norm and dropout) on synthetic
#    16x16 "stripe" images in `[0, 1]`;
# 2. attacks it with FGSM (Goodfellow et al. 2015), PGD (Madry et al. 2018) and BPGD,
#    IMA's boundary search (Ma et al., Algorithm 3);
# 3. draws the robust-accuracy curve of `arjax.evaluation.robust_accuracy` (IMA's
#    evaluation: the worst of a cross-entropy and a margin-loss PGD per radius).
#
# Set `ARJAX_NOTEBOOK_SMOKE=1` for a seconds-long run (the test suite does).

# %%
import os

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from flax import nnx

import arjax

SMOKE = os.environ.get("ARJAX_NOTEBOOK_SMOKE") == "1"
NUM_TRAIN, NUM_TEST, TRAIN_STEPS, PGD_STEPS = (256, 128, 60, 10) if SMOKE else (2048, 512, 400, 50)

# %% [markdown]
# ## Data: horizontal (class 0) vs vertical (class 1) stripes in noise
#
# Images are `[N, 16, 16, 1]` floats in `[0, 1]`, the range arjax's attacks clip to
# (`bounds=(0, 1)`, the default).


# %%
def stripes(n, seed):
    """``n`` images ``[n, 16, 16, 1]`` in [0, 1] and labels ``[n]`` (0 horizontal, 1 vertical)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    pos = rng.integers(2, 14, n)
    img = rng.uniform(0.0, 0.6, (n, 16, 16))
    for i in range(n):
        if y[i] == 0:
            img[i, pos[i] - 1 : pos[i] + 2, :] += 0.4
        else:
            img[i, :, pos[i] - 1 : pos[i] + 2] += 0.4
    return np.clip(img, 0, 1)[..., None].astype(np.float32), y.astype(np.int32)


x_train, y_train = stripes(NUM_TRAIN, 0)
x_test, y_test = stripes(NUM_TEST, 1)
print("train", x_train.shape, "test", x_test.shape)

# %% [markdown]
# ## Your model: any `nnx.Module` that maps images to logits


# %%
class TinyCNN(nnx.Module):
    """conv(8) - BN - relu - conv(16) - relu - global average pool - dropout - linear(2)."""

    def __init__(self, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(1, 8, (3, 3), rngs=rngs)
        self.bn = nnx.BatchNorm(8, rngs=rngs)
        self.conv2 = nnx.Conv(8, 16, (3, 3), strides=(2, 2), rngs=rngs)
        self.drop = nnx.Dropout(0.2, rngs=rngs)
        self.head = nnx.Linear(16, 2, rngs=rngs)

    def __call__(self, x):
        """Logits ``[B, 2]`` of images ``[B, 16, 16, 1]``."""
        h = nnx.relu(self.bn(self.conv1(x)))
        h = nnx.relu(self.conv2(h)).mean(axis=(1, 2))
        return self.head(self.drop(h))


model = TinyCNN(nnx.Rngs(0))
optimizer = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)


@nnx.jit
def train_step(model, optimizer, x, y):
    """One Adam step on the mean softmax cross-entropy (train-mode BN and dropout)."""

    def loss_fn(m):
        return optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss


model.train()
rng = np.random.default_rng(0)
for _ in range(TRAIN_STEPS):
    idx = rng.integers(0, NUM_TRAIN, 64)
    loss = train_step(model, optimizer, x_train[idx], y_train[idx])
print(f"final training loss {float(loss):.3f}")

# %% [markdown]
# ## From module to `logits_fn`: eval mode first
#
# `model.eval()` matters twice over. **Batch norm** in train mode normalises with the
# current batch's statistics and *updates* its running averages: an attack would then
# make examples interact (the perturbation of one image moves another's logits) and,
# inside `jax.grad`, the update fails with flax's `TraceContextError: Cannot mutate
# BatchStat from a different trace level`. **Dropout** in train mode draws a new mask
# each call, so the attack would chase noise (and needs an rng stream inside the trace).
# In eval mode both are deterministic functions of the input: the model an attacker
# faces at test time.
#
# The pure route of DESIGN §3.2: split the module once into its static graph and its
# state, and rebuild it inside the traced function. Wrapping the state in a
# `jax.tree_util.Partial` lets arjax's jitted evaluation pass the arrays as arguments
# (new weights reuse the compiled code).

# %%
model.eval()
graphdef, state = nnx.split(model)


def forward(state, images):
    """Logits ``[B, 2]`` of the eval-mode model for images ``[B, 16, 16, 1]``."""
    return nnx.merge(graphdef, state)(images)


logits_fn = jax.tree_util.Partial(forward, state)
clean_acc = float(jnp.mean(jnp.argmax(logits_fn(x_test), -1) == y_test))
print(f"clean test accuracy {clean_acc:.3f}")

# %% [markdown]
# ## FGSM, PGD and BPGD at one radius

# %%
EPS = 0.1
key = jax.random.key(0)
x, y = jnp.asarray(x_test), jnp.asarray(y_test)


def accuracy(images):
    """Test accuracy of the model on ``images`` ``[N, 16, 16, 1]``."""
    return float(jnp.mean(jnp.argmax(logits_fn(images), -1) == y))


x_fgsm = arjax.attacks.fgsm(logits_fn, x, y, eps=EPS)
x_pgd = arjax.attacks.pgd(logits_fn, x, y, key, eps=EPS, num_steps=PGD_STEPS)
# BPGD: PGD inside each sample's radius, then bisection onto the decision boundary.
boundary = arjax.attacks.bpgd(logits_fn, x, y, key, eps=EPS, num_steps=PGD_STEPS)
linf = {n: float(jnp.max(jnp.abs(a - x))) for n, a in (("fgsm", x_fgsm), ("pgd", x_pgd))}
results = {"clean": accuracy(x), "fgsm": accuracy(x_fgsm), "pgd": accuracy(x_pgd)}
crossed = np.asarray(boundary.crossed)
print(results, "max |delta|:", linf)
print(
    f"BPGD crossed the boundary within eps={EPS} for {crossed.mean():.2f} of the samples; "
    f"median boundary distance {np.median(np.asarray(boundary.distance)[crossed]):.3f}"
)

# %%
fig, axes = plt.subplots(1, 4, figsize=(10, 2.8))
for ax, (name, img) in zip(
    axes, (("clean", x), ("FGSM", x_fgsm), ("PGD", x_pgd), ("BPGD", boundary.images)), strict=True
):
    ax.imshow(np.asarray(img[0, ..., 0]), cmap="gray", vmin=0, vmax=1)
    pred = int(jnp.argmax(logits_fn(img[:1]), -1)[0])
    ax.set(title=f"{name}: predicted {pred}", xticks=[], yticks=[])
fig.suptitle(f"test image 0 (label {int(y[0])}), eps = {EPS}")
plt.show()

# %% [markdown]
# ## Robust-accuracy curve
#
# `robust_accuracy` runs a PGD per radius and loss (`ce` and `margin`) and counts a
# sample robust only if it survives both; `eps` is the sequence of radii of the curve.

# %%
radii = (0.0, 0.02, 0.05, 0.1, 0.15, 0.2)
curve = arjax.evaluation.robust_accuracy(
    logits_fn, x_test, y_test, jax.random.key(1), eps=radii, num_steps=PGD_STEPS
)
fig, ax = plt.subplots(figsize=(5, 3.5))
ax.plot(curve.eps, curve.accuracy, "o-", label="worst of ce, margin")
for loss, acc in curve.per_loss.items():
    ax.plot(curve.eps, acc, "--", alpha=0.6, label=f"PGD-{PGD_STEPS} {loss}")
ax.set(xlabel="L-inf radius ε", ylabel="robust accuracy", ylim=(0, 1.02), title="TinyCNN")
ax.legend()
plt.show()
print(f"area under the curve {curve.area():.3f}")

# %% [markdown]
# Sanity checks a researcher should expect to hold: the attacks stay in their ball,
# PGD is at least as strong as FGSM here, and the curve starts at the clean accuracy and
# never rises.

# %%
acc = np.asarray(curve.accuracy)
assert max(linf.values()) <= EPS + 1e-6
assert abs(acc[0] - clean_acc) < 1e-6 and np.all(np.diff(acc) <= 1e-6)
assert float(jnp.max(boundary.distance)) <= EPS + 1e-6
summary = {"clean": clean_acc, **results, "curve": acc.tolist(), "bpgd_crossed": crossed.mean()}
print("SUMMARY", {k: np.round(v, 4).tolist() for k, v in summary.items()})
