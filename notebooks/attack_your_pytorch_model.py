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
# # Attack, evaluate and robustly fine-tune your PyTorch model with arjax
#
# Your network and its weights live in PyTorch. `arjax.models.from_torch` runs the
# module's own `forward` on JAX arrays through torchax (Google's PyTorch-on-JAX library),
# so every arjax attack, AutoAttack, and every training method's compiled step takes it
# as it is. This notebook
#
# 1. trains a small CNN (BatchNorm, dropout) in plain PyTorch on synthetic 16x16 "stripe"
#    images in `[0, 1]`;
# 2. wraps it with `from_torch` and checks the logits against PyTorch's;
# 3. attacks it with PGD (Madry et al. 2018) and AutoAttack (Croce & Hein 2020), and
#    confirms in PyTorch that the adversarial images fool the original module;
# 4. fine-tunes it with TRADES (Zhang et al. 2019) in arjax's compiled step and loads the
#    result back into the PyTorch module as a `state_dict`.
#
# Needs `pip install 'arjax[torch]'`. Set `ARJAX_NOTEBOOK_SMOKE=1` for a seconds-long run.

# %%
import os

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
import torch
from torch import nn

import arjax
from arjax.evaluation.autoattack_eval import autoattack
from arjax.training.state import create_train_state
from arjax.training.step import make_train_step

SMOKE = os.environ.get("ARJAX_NOTEBOOK_SMOKE") == "1"
NUM_TRAIN, NUM_TEST, TORCH_STEPS, FINETUNE_STEPS, PGD_STEPS = (
    (256, 64, 60, 4, 5) if SMOKE else (2048, 512, 400, 200, 50)
)
torch.manual_seed(0)

# %% [markdown]
# ## Data: horizontal (class 0) vs vertical (class 1) stripes in noise
#
# arjax's images are channels-last `[N, H, W, C]`; PyTorch's are `[N, C, H, W]`.


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


def to_torch(images):
    """``[N, H, W, C]`` arrays -> ``[N, C, H, W]`` torch tensors."""
    return torch.from_numpy(np.array(images)).permute(0, 3, 1, 2).contiguous()


x_train, y_train = stripes(NUM_TRAIN, 0)
x_test, y_test = stripes(NUM_TEST, 1)

# %% [markdown]
# ## Your model, trained the PyTorch way


# %%
class StripeNet(nn.Module):
    """conv(8) - BN - relu - conv(16)/2 - relu - global average pool - dropout - linear(2)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.features = nn.ReLU()
        self.drop = nn.Dropout(0.2)
        self.head = nn.Linear(16, 2)

    def forward(self, x):
        """Logits ``[B, 2]`` of images ``[B, 1, 16, 16]``."""
        h = self.features(self.conv2(torch.relu(self.bn(self.conv1(x)))))
        return self.head(self.drop(h.mean((2, 3))))


net = StripeNet()
opt = torch.optim.Adam(net.parameters(), lr=3e-3)
rng = np.random.default_rng(0)
net.train()
for _ in range(TORCH_STEPS):
    idx = rng.integers(0, NUM_TRAIN, 64)
    loss = nn.functional.cross_entropy(
        net(to_torch(x_train[idx])), torch.from_numpy(y_train[idx]).long()
    )
    opt.zero_grad()
    loss.backward()
    opt.step()
net.eval()
print(f"final PyTorch training loss {loss.item():.3f}")

# %% [markdown]
# ## `from_torch`: the module as arjax's model
#
# `from_torch(module, example_input)` copies the module, runs `example_input` (in the
# module's own layout) once to check its outputs, and returns `(fns, params, batch_stats)`
# like `arjax.models.adapt`: parameters and buffers by PyTorch's names, as JAX arrays.
# `model.logits_fn()` is the eval-mode closure attacks take (running statistics, dropout
# off), on channels-last images. `features="features"` names the submodule whose output
# ARFL and CAMs read.

# %%
model = arjax.models.from_torch(net, to_torch(x_test[:2]), features="features")
logits_fn = model.logits_fn()
x, y = jnp.asarray(x_test), jnp.asarray(y_test)
with torch.no_grad():
    torch_logits = net(to_torch(x_test)).numpy()
logits_gap = float(jnp.max(jnp.abs(logits_fn(x) - torch_logits)))
clean_acc = float(jnp.mean(jnp.argmax(logits_fn(x), -1) == y))
print(f"clean accuracy {clean_acc:.3f}; max |logits arjax - PyTorch| = {logits_gap:.1e}")
print("parameters:", list(model.params["params"])[:4], "...")

# %% [markdown]
# ## PGD and AutoAttack on the PyTorch model

# %%
EPS = 0.1
x_pgd = arjax.attacks.pgd(logits_fn, x, y, jax.random.key(0), eps=EPS, num_steps=PGD_STEPS)
pgd_acc = float(jnp.mean(jnp.argmax(logits_fn(x_pgd), -1) == y))
aa = autoattack(logits_fn, x, y, jax.random.key(1), EPS, version="fast", num_steps=PGD_STEPS)
with torch.no_grad():  # the adversarial images, back in PyTorch: the module is fooled too
    torch_pgd_acc = float((net(to_torch(x_pgd)).argmax(-1).numpy() == y_test).mean())
print(f"PGD-{PGD_STEPS} accuracy {pgd_acc:.3f} (PyTorch on the same images: {torch_pgd_acc:.3f})")
print(f"AutoAttack ({', '.join(aa.attacks)}) robust accuracy {aa.robust_accuracy:.3f}")

# %%
fig, axes = plt.subplots(1, 3, figsize=(7.5, 2.8))
pairs = (("clean", x), ("PGD", x_pgd), ("AutoAttack", jnp.asarray(aa.x_adv)))
for ax, (name, img) in zip(axes, pairs, strict=True):
    ax.imshow(np.asarray(img[0, ..., 0]), cmap="gray", vmin=0, vmax=1)
    pred = int(jnp.argmax(logits_fn(img[:1]), -1)[0])
    ax.set(title=f"{name}: predicted {pred}", xticks=[], yticks=[])
fig.suptitle(f"test image 0 (label {int(y[0])}), eps = {EPS}")
plt.show()

# %% [markdown]
# ## Robust fine-tuning with TRADES, compiled, then back to PyTorch
#
# The method's loss and the train step are the ones `arjax-train` runs: BatchNorm uses the
# batch's statistics and updates its running averages as PyTorch would, dropout draws
# from the step's key. `model.state_dict(params, batch_stats)` gives PyTorch's keys and
# dtypes back (`num_batches_tracked` stays int64).

# %%
trades = arjax.methods.TRADES(attack=f"pgd:linf:{EPS}:{PGD_STEPS}:loss=kl")
loss_fn = arjax.methods.make_loss(trades, model.fns, (0.0, 1.0))
tx = optax.adam(1e-3)
state = create_train_state(model.params, model.batch_stats, tx, seed=0)
step = jax.jit(make_train_step(loss_fn, tx))
for _ in range(FINETUNE_STEPS):
    idx = rng.integers(0, NUM_TRAIN, 64)
    batch = {"image": x_train[idx], "label": y_train[idx], "index": jnp.asarray(idx)}
    state, metrics = step(state, batch)
print(f"TRADES loss after {FINETUNE_STEPS} steps: {float(metrics['loss']):.3f}")

net.load_state_dict(
    {k: torch.from_numpy(v) for k, v in model.state_dict(state.params, state.batch_stats).items()}
)
tuned = model.fns.logits_fn(state.params, state.batch_stats)
with torch.no_grad():
    tuned_gap = float(np.max(np.abs(net(to_torch(x_test)).numpy() - np.asarray(tuned(x)))))
x_pgd2 = arjax.attacks.pgd(tuned, x, y, jax.random.key(0), eps=EPS, num_steps=PGD_STEPS)
tuned_pgd = float(jnp.mean(jnp.argmax(tuned(x_pgd2), -1) == y))
print(
    f"fine-tuned: PGD-{PGD_STEPS} accuracy {tuned_pgd:.3f}; PyTorch reloaded, gap {tuned_gap:.1e}"
)

# %% [markdown]
# Checks that must hold: arjax computes PyTorch's logits, the attacks stay in their ball,
# AutoAttack is at least as strong as nothing, and the exported weights reproduce arjax.

# %%
assert logits_gap < 1e-4 and tuned_gap < 1e-4
assert float(jnp.max(jnp.abs(x_pgd - x))) <= EPS + 1e-6
assert aa.robust_accuracy <= aa.clean_accuracy
summary = {
    "clean": clean_acc,
    "pgd": pgd_acc,
    "torch_pgd": torch_pgd_acc,
    "autoattack": aa.robust_accuracy,
    "logits_gap": logits_gap,
    "tuned_gap": tuned_gap,
    "tuned_pgd": tuned_pgd,
}
print("SUMMARY", {k: float(v) for k, v in summary.items()})
