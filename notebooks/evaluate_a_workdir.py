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
# # Evaluate a finished run's workdir with new attacks
#
# A training workdir holds everything needed to rebuild the model: `config.json` (the
# full config) and the checkpoints. This notebook loads one, restores its trained state,
# and evaluates it with attacks it was not trained or evaluated with, through arjax's
# attack registry (`"attack:norm:eps[:steps]"` specs: `pgd`, `apgd-ce`, `square`,
# `autoattack`, ...).
#
# Point `WORKDIR` (or the `ARJAX_WORKDIR` environment variable) at your run; without
# one, the notebook first trains a small quickstart-like run (dual adversarial + ARFL on
# two-moons, as `configs/quickstart.py`). Set `ARJAX_NOTEBOOK_SMOKE=1` for tiny sizes.

# %%
import os

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt

import arjax
from arjax import attacks
from arjax.experiment import final_eval, presets, train
from arjax.experiment.presets import method_config

SMOKE = os.environ.get("ARJAX_NOTEBOOK_SMOKE") == "1"
WORKDIR = os.environ.get("ARJAX_WORKDIR", "")

# %% [markdown]
# ## A run to evaluate (trained here only if none is given)

# %%
if not WORKDIR:
    WORKDIR = os.path.abspath("runs/notebook_quickstart" + ("_smoke" if SMOKE else ""))
    cfg = presets.base_config()
    cfg.name = "quickstart: moons, dual adversarial + ARFL"
    cfg.data.sizes = dict(train=512, test=256) if SMOKE else dict(train=4000, test=1000)
    cfg.model.update(hidden=(32, 32), num_outputs=2)
    cfg.method = method_config("arfl", r=0.5, lam=0.5, attack="fgsm:linf:0.05")
    cfg.optim.learning_rate = 3e-3
    cfg.train.update(batch_size=128, num_epochs=8 if SMOKE else 40, steps_per_call=4)
    cfg.train.update(log_every=4, checkpoint_every=32)
    cfg.eval.update(num_steps=5 if SMOKE else 20, eps=(0.0, 0.1, 0.2))
    train.run(cfg, WORKDIR, progress=False)
print("workdir:", WORKDIR, sorted(os.listdir(WORKDIR)))

# %% [markdown]
# ## Restore config, data and trained state
#
# `arjax.load_run` reads `config.json`, rebuilds the data and the model as training built
# them, and restores the best checkpoint when the run kept one, else the latest (pass
# `run="seed_1"` for one of several runs). `run.logits_fn` is the eval-mode closure
# attacks take; `run.method` the typed training method.

# %%
run = arjax.load_run(WORKDIR)
cfg, dataset = run.config, run.dataset
print(run.method.name, run.checkpoint, "step", int(run.state.step))

split = dataset.splits["test"]
x, y = jnp.asarray(split["image"]), jnp.asarray(split["label"])
logits_fn = run.logits_fn

# %% [markdown]
# ## New attacks through the registry
#
# `parse_attack` turns a spec into an `AttackSpec` (a bad spec fails here, listing the
# valid attacks and norms); `run_attack` runs it, pure and jittable with the spec
# static. Two-moons inputs are not images, so `bounds` is the dataset's (None: no
# clipping).

# %%
steps = 10 if SMOKE else 100
specs = [
    "fgsm:linf:0.1",
    f"pgd:linf:0.1:{steps}",
    f"apgd-ce:linf:0.1:{steps}",
    f"square:linf:0.1:{50 if SMOKE else 1000}",
    "autoattack-fast:linf:0.1" if SMOKE else "autoattack:linf:0.1",
]
parsed = [attacks.parse_attack(s, default_steps=steps) for s in specs]


def accuracy(images):
    """Test accuracy of the restored model on ``images`` shaped like ``x``."""
    return float(jnp.mean(jnp.argmax(logits_fn(images), -1) == y))


results = {"clean": accuracy(x)}
for text, spec in zip(specs, parsed, strict=True):
    run = jax.jit(lambda xx, yy, k, spec=spec: attacks.run_attack(
        spec, logits_fn, xx, yy, k, bounds=dataset.bounds
    ))  # fmt: skip
    x_adv = run(x, y, jax.random.key(0))
    assert float(jnp.max(jnp.abs(x_adv - x))) <= spec.eps + 1e-5
    results[text] = accuracy(x_adv)
    print(f"{text:28s} accuracy {results[text]:.3f}")

# %%
fig, ax = plt.subplots(figsize=(7, 3.5))
ax.bar(range(len(results)), list(results.values()), color="tab:blue")
ax.set_xticks(range(len(results)), list(results), rotation=25, ha="right")
ax.set(ylabel="test accuracy", ylim=(0, 1), title=f"{cfg.name}: L-inf eps 0.1")
plt.show()

# %% [markdown]
# ## The same, written to the workdir: `evaluate_workdir`
#
# `arjax-evaluate` does this for every run of a workdir (all seeds and folds) and writes
# `eval.json` next to each run's `result.json`, with the means and stds over runs. The
# `eval` section's fields can be overridden, e.g. new `attacks`.

# %%
out = final_eval.evaluate_workdir(
    WORKDIR, overrides={"attacks": tuple(specs[:3])}, curves=False, progress=False
)
table = {k: v["mean"] for k, v in out["summary"].items() if k.endswith("/accuracy")}
for k, v in table.items():
    print(f"{k:45s} {v:.3f}")

# %% [markdown]
# Checks: every attack is at most as accurate as clean data, PGD is at least as strong
# as one FGSM step, and `evaluate_workdir` measured the same (deterministic) FGSM
# accuracy and clean accuracy as the cells above.

# %%
assert all(v <= results["clean"] + 1e-9 for v in results.values())
assert results[specs[1]] <= results["fgsm:linf:0.1"] + 1e-9
assert abs(table["fgsm_linf_0.1/accuracy"] - results["fgsm:linf:0.1"]) < 1e-6
assert abs(table["clean/accuracy"] - results["clean"]) < 1e-6
print("SUMMARY", {"results": results, "evaluate_workdir": table})
