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
# # Train IMA, ARFL and TRADES from Python on two-moons
#
# The CLI (`python -m arjax.launch --config configs/moons_ima.py:ima`) is a thin layer
# over `arjax.experiment.train.run(config, workdir)`; here we build the configs in
# Python and call it directly. Each run writes the same workdir the CLI writes
# (`config.json`, checkpoints, `metrics.jsonl`, `result.json`, `report.json`), so it can
# be re-evaluated later (see `evaluate_a_workdir.py`), and rerunning this notebook
# resumes or reuses finished runs.
#
# Methods (DESIGN §4):
# * **IMA** (Ma et al.): per-sample margins grow until each sample's eps-ball meets the
#   decision boundary (found by BPGD); `eps_max = 0.3`, `beta = 0.5` as in Fig. 6.
# * **ARFL** (Hao et al., Eq. 5): dual clean/adversarial batches (`r = 0.5`) with the
#   feature-magnitude regulariser `L_robust` (weight `lam`).
# * **TRADES** (Zhang et al. 2019): CE + `beta` * KL(clean || PGD-on-KL), eps 0.3.
#
# Set `ARJAX_NOTEBOOK_SMOKE=1` for a seconds-long run (the test suite does).

# %%
import json
import os

import jax
import matplotlib.pyplot as plt
import numpy as np

import arjax
from arjax.evaluation import report
from arjax.experiment import presets, train
from arjax.experiment.presets import method_config

SMOKE = os.environ.get("ARJAX_NOTEBOOK_SMOKE") == "1"
ROOT = os.path.abspath("runs/notebook_moons" + ("_smoke" if SMOKE else ""))
ATTACK_STEPS = 5 if SMOKE else 20

# %% [markdown]
# ## One config per method
#
# `presets.base_config()` has every section; we set the two-moons data and IMA's MLP
# (2-32-64-128-2, LayerNorm, leaky ReLU) and pick the method by registered name.
# Bad values fail here, before any compute, naming the field and the valid choices.


# %%
def moons_config(method):
    """IMA's Fig. 6 set-up (smaller under SMOKE) with the given ``method`` section."""
    cfg = presets.base_config()
    cfg.name = f"notebook moons: {method.name}"
    cfg.data.sizes = (
        dict(train=1024, val=256, test=256) if SMOKE else dict(train=20000, val=2000, test=2000)
    )
    cfg.model.update(
        hidden=(32, 64, 128), activation="leaky_relu", layer_norm=(False, True, True), num_outputs=2
    )
    cfg.method = method
    cfg.optim.learning_rate = 1e-3
    cfg.train.update(batch_size=128, num_epochs=3 if SMOKE else 30, steps_per_call=8)
    cfg.train.update(log_every=8, eval_every=0, checkpoint_every=32 if SMOKE else 780)
    cfg.eval.update(adv_attack="pgd", adv_eps=0.1, num_steps=10 if SMOKE else 100)
    cfg.eval.update(batch_size=256, eps=(0.0, 0.1, 0.2, 0.3))
    return cfg


configs = {
    "IMA": moons_config(method_config("ima", eps_max=0.3, beta=0.5, num_steps=ATTACK_STEPS)),
    "ARFL": moons_config(method_config("arfl", r=0.5, lam=0.5, attack="fgsm:linf:0.05")),
    "TRADES": moons_config(
        method_config("trades", beta=6.0, attack=f"pgd:linf:0.3:{ATTACK_STEPS}:loss=kl")
    ),
}
print(configs["IMA"].method)

# %% [markdown]
# ## Train (each run is resumable; a finished one is read back, not retrained)

# %%
reports = {}
for label, cfg in configs.items():
    reports[label] = train.run(cfg, os.path.join(ROOT, label.lower()), progress=False)
    print(label, "clean accuracy", reports[label]["mean_accuracy"])

# %% [markdown]
# ## Restore the trained states
#
# `arjax.load_run` rebuilds the model from the run's config and restores its checkpoint:
# a `ModelFns` (pure functions of the model) and the `TrainState` pytree (params, batch
# statistics, optimiser state and, for IMA, the method state `{"margins": [N_train]}`).

# %%
trained = {}
for label in configs:
    run = arjax.load_run(os.path.join(ROOT, label.lower()))
    trained[label] = (run.model, run.state, run.run_dir)
    print(label, run.checkpoint, "step", int(run.state.step))
dataset = run.dataset
test = dataset.splits["test"]

# %% [markdown]
# ## Watch IMA's margins grow
#
# Every logged step records the mean of the margin table (`train/margin_mean` in
# `metrics.jsonl`). Margins start at a small floor and grow by a fixed step for samples
# whose ball has not yet met the boundary (Ma et al., Algorithm 1).

# %%
records = report.read_jsonl(os.path.join(trained["IMA"][2], "metrics.jsonl"))
steps = [r["step"] for r in records if "train/margin_mean" in r]
margin_mean = [r["train/margin_mean"] for r in records if "train/margin_mean" in r]
margins = np.asarray(trained["IMA"][1].method_state["margins"])

fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 3.5))
ax0.plot(steps, margin_mean, "o-")
ax0.set(xlabel="training step", ylabel="mean margin", title="IMA margins during training")
ax1.hist(margins, bins=30)
ax1.set(xlabel="margin (L-inf)", ylabel="training samples", title="final IMA margin histogram")
plt.show()

# %% [markdown]
# ## Decision boundaries
#
# The class-1 probability over the plane, its 0.5 contour, and the test points. IMA's
# boundary should sit near the middle between the moons (Fig. 6).

# %%
xs = np.linspace(-2.0, 3.0, 120)
ys = np.linspace(-1.5, 2.0, 100)
grid = np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2).astype(np.float32)
fig, axes = plt.subplots(1, len(trained), figsize=(4.2 * len(trained), 3.5))
for ax, (label, (model, state, _)) in zip(axes, trained.items(), strict=True):
    logits_fn = model.logits_fn(state.params, state.batch_stats)
    prob = np.asarray(jax.nn.softmax(logits_fn(grid))[:, 1]).reshape(len(ys), len(xs))
    ax.contourf(xs, ys, prob, levels=20, cmap="RdBu_r", alpha=0.6)
    ax.contour(xs, ys, prob, levels=[0.5], colors="k")
    ax.scatter(*test["image"][:300].T, c=test["label"][:300], cmap="RdBu_r", s=6, ec="k", lw=0.2)
    ax.set(title=label, xticks=[], yticks=[])
plt.show()

# %% [markdown]
# ## Robust accuracy: the 100-PGD (ce + margin) curve of each run's `result.json`

# %%
curves = {}
for label, (_, _, run_dir) in trained.items():
    with open(os.path.join(run_dir, "result.json")) as f:
        curves[label] = json.load(f)["robust_curve"]
fig, ax = plt.subplots(figsize=(5, 3.5))
for label, c in curves.items():
    ax.plot(c["eps"], c["accuracy"], "o-", label=f"{label} (area {c['area']:.3f})")
ax.set(xlabel="L-inf noise level ε", ylabel="robust accuracy", ylim=(0, 1.02))
ax.legend()
plt.show()

# %% [markdown]
# Checks: the margins lie in IMA's `[floor, eps_max]`, they grew during training, and
# every curve starts at the run's clean accuracy and never rises.

# %%
assert margins.shape == (dataset.splits["train"]["image"].shape[0],)
assert margins.min() > 0 and margins.max() <= 0.3 + 1e-6
assert margin_mean[-1] > margin_mean[0]
for c in curves.values():
    assert (
        np.all(np.diff(c["accuracy"]) <= 1e-9)
        and abs(c["accuracy"][0] - c["clean_accuracy"]) < 1e-9
    )
summary = {
    "margin_mean": [round(m, 4) for m in margin_mean],
    "margins_min_max": [float(margins.min()), float(margins.max())],
    "curves": {k: [round(a, 4) for a in c["accuracy"]] for k, c in curves.items()},
}
print("SUMMARY", summary)
