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
# # Saliency, CAM and lesion localisation on the synthetic-lesions demo
#
# Khakzar et al. (seed 002) judge a medical classifier's interpretability by its
# vanilla-gradient **saliency maps** (Simonyan et al. 2013; gradients clipped at 3 std
# and scaled to [0, 1], §4.2) and by how well its **class activation maps** (CAM, Zhou
# et al. 2016) localise the annotated findings: the CAM is upsampled, scaled to
# [0, 255], thresholded, and a box counts as found when IoU(mask, box) > T(IoU); the
# threshold is chosen on held-out folds (§3.3, Fig. 3).
#
# The data are arjax's built-in synthetic X-ray-like images with lesion boxes (written as
# PNGs + manifest CSV, read back like a real data set; no download). The config is
# `configs/synthetic_lesions.py` (its `smoke` variant when `ARJAX_NOTEBOOK_SMOKE=1`).
# `ARJAX_REPO` names the repository root (default: the working directory when it holds
# `configs/`, else the folder above it).

# %%
import importlib.util
import os

import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from flax import nnx

import arjax
from arjax.evaluation import interpret, localization
from arjax.experiment import train

SMOKE = os.environ.get("ARJAX_NOTEBOOK_SMOKE") == "1"
# Jupyter starts the kernel in notebooks/; a script run usually starts in the repository.
REPO = os.environ.get("ARJAX_REPO") or os.path.abspath("." if os.path.isdir("configs") else "..")
spec = importlib.util.spec_from_file_location(
    "synthetic_lesions", os.path.join(REPO, "configs", "synthetic_lesions.py")
)
lesions_config = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lesions_config)

cfg = lesions_config.get_config("smoke" if SMOKE else "clean")
if SMOKE:  # a few more images and epochs than the CLI smoke run: CAMs need some training
    cfg.data.num_images = 160
    cfg.train.update(num_epochs=4, batch_size=16)
WORKDIR = os.path.abspath("runs/notebook_lesions" + ("_smoke" if SMOKE else ""))
print(cfg.model, cfg.method.name)

# %% [markdown]
# ## Train (or reuse) the run
#
# `cam_cnn`: three conv stages, global average pooling, a linear head: the network
# family CAMs are defined for (`logit = b + mean_ij W^T f_ij`).

# %%
result = train.run(cfg, WORKDIR, progress=False)
run = arjax.load_run(WORKDIR)
dataset, model, state, run_dir = run.dataset, run.model, run.state, run.run_dir
test = dataset.splits["test"]
print(run.checkpoint, "clean test AUC", result["summary"]["clean/auc"]["mean"])

# %% [markdown]
# ## Maps of the annotated test images
#
# `class_activation_maps` gives `[B, h, w, K]` CAMs (one logit here: `K = 1`, the
# lesion class); `upsample_cam` brings them to the input size in [0, 255]. Saliency is
# the gradient of each image's own loss (eval-mode statistics).

# %%
positions = np.array(sorted(test.boxes))[:6]
batch = test.gather(positions)
x = jnp.asarray(batch["image"], jnp.float32)
y = jnp.asarray(batch["label"])
cams = interpret.class_activation_maps(model, state.params, state.batch_stats, x)
cam255 = np.asarray(interpret.upsample_cam(cams, x.shape[1:3]))[..., 0]  # [B, H, W]
sal = np.asarray(interpret.model_saliency(model, state.params, state.batch_stats, x, y))
print("CAMs", cams.shape, "-> upsampled", cam255.shape, "; saliency", sal.shape)

fig, axes = plt.subplots(3, len(positions), figsize=(1.9 * len(positions), 6), squeeze=False)
for j, p in enumerate(positions):
    for i, (img, cmap) in enumerate(((x[j, ..., 0], "gray"), (cam255[j], "jet"), (sal[j], "hot"))):
        ax = axes[i, j]
        ax.imshow(np.asarray(img), cmap=cmap)
        for _, bx, by, bw, bh in test.boxes[int(p)]:
            ax.add_patch(plt.Rectangle((bx - 0.5, by - 0.5), bw, bh, fill=False, ec="cyan"))
        ax.set(xticks=[], yticks=[])
for i, name in enumerate(("image", "CAM", "saliency")):
    axes[i, 0].set_ylabel(name)
plt.show()

# %% [markdown]
# ## Localisation accuracy vs T(IoU)
#
# `localization_report` thresholds every annotated test box's CAM, chooses the threshold
# on one fold and measures on the others, and compares with randomly placed boxes of the
# same size (the chance level).

# %%
folds = 2 if SMOKE else 5
loc = localization.localization_report(
    model, state.params, state.batch_stats, test, folds=folds, random_draws=20
)
print(localization.localization_table(loc))
fig, ax = plt.subplots(figsize=(5, 3.5))
ax.plot(loc["ious"], loc["mean"]["accuracy"], "o-", label="CAM")
ax.plot(loc["ious"], loc["mean"]["random_box"], "k--", label="random box")
ax.set(xlabel="T(IoU)", ylabel="localisation accuracy", ylim=(0, 1.02), title=cfg.name)
ax.legend()
plt.show()

# %% [markdown]
# Checks: saliency lies in [0, 1]; the upsampled CAM in [0, 255]; the CAM mean plus
# the head's bias is the logit (the CAM identity); accuracies fall as T(IoU) rises, and
# at the loosest T(IoU) the CAM finds more lesions than random boxes do.

# %%
logits = np.asarray(model.logits_fn(state.params, state.batch_stats)(x)).reshape(-1)  # [B]
module = nnx.merge(model.graphdef, state.params, state.batch_stats, copy=True)
bias = np.asarray(interpret.cam_head(module).bias[...])
assert sal.min() >= 0 and sal.max() <= 1
assert cam255.min() >= -1e-3 and cam255.max() <= 255 + 1e-3
np.testing.assert_allclose(np.asarray(cams).mean(axis=(1, 2))[:, 0] + bias[0], logits, atol=1e-3)
assert np.all(np.diff(loc["mean"]["accuracy"]) <= 1e-9)
assert loc["mean"]["accuracy"][0] > loc["mean"]["random_box"][0]
print("SUMMARY", {"auc": result["summary"]["clean/auc"]["mean"], "localization": loc["mean"]})
