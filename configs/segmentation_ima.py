"""IMA for 2-D medical image segmentation (Ma et al., seed 004, "Experiments on Segmentation").

The paper trains nnU-Net's 2-D U-Net slice by slice with IMA, where a slice counts as
"correct" when its Dice is >= 0.6, the re-initialisation of a misclassified sample's
margin is replaced by refine/shrink, and all noise levels are L2; the baselines are the
plain network ("nnUnet", here ``ce``) and "adv eps" (20-PGD adversarial training). The
evaluation is 100-PGD (here worst case over the cross-entropy and margin losses, as for
classification) with TVDI (Eq. 9) and ADI (Eq. 10) against the noise level.

Run (built-in synthetic data, written under runs/data/ on first use, nothing downloaded):
    python -m arjax.launch --config configs/segmentation_ima.py:ima --workdir runs/seg_ima
    python -m arjax.launch --config configs/segmentation_ima.py:ce --workdir runs/seg_ce
    python -m arjax.launch --config configs/segmentation_ima.py:adv0.5 --workdir runs/seg_adv0.5
    arjax-compare runs/seg_ce runs/seg_adv0.5 runs/seg_ima --metric adi --out runs/seg_cmp

Variants ``<method>[,<data>]``:

* method: ``ce`` (nnU-Net's Dice + CE loss on clean data), ``adv<eps>`` (e.g. ``adv0.5``:
  ``(L(x) + L(x_adv)) / 2`` with 20-PGD, alpha 4, L2), ``ima`` or ``ima<eps_max>`` (e.g.
  ``ima15``; Alg. 1-3 with Dice >= 0.6 as "correct", ``shrink_misclassified``, L2, beta
  0.5, BPGD 20 + 10 steps; bare ``ima`` takes the data set's eps_max below);
* data: ``synthetic`` (default: 32x32 lesion blobs, 256/32/64 train/val/test slices,
  U-Net widths (16, 32, 64), eps_max 2.0, L2 levels 0-2), ``smoke`` (the same data tiny,
  seconds; runs and resumes in the test suite), or the paper's three MSD tasks
  ``heart`` (D2), ``hippocampus`` (D4), ``prostate`` (D5), read from
  ``--config.data.root`` (never downloaded). A bare ``smoke`` is ``ima,smoke``.

MSD task folder layout (as the Decathlon ships it; e.g. Task02_Heart)::

    <root>/dataset.json                 with "labels": {"0": "background", ...}
    <root>/imagesTr/la_003.nii.gz ...   3-D volumes (Prostate: 4-D, modality 0 = T2)
    <root>/labelsTr/la_003.nii.gz ...

    python -m arjax.launch --config configs/segmentation_ima.py:ima15,hippocampus \
        --workdir runs/d4_ima15 --config.data.root=$MSD/Task04_Hippocampus

Paper settings kept for MSD: the case splits (D2 16/1/3, D4 208/17/35, D5 25/2/5 cases
train/val/test), nnU-Net's 2-D patch sizes (320x256, 56x40 -> padded to 56x40, 320x320)
and batch sizes (40, 366, 32), 50 epochs, seed 10, L2 noise, 100-PGD evaluation, the
Dice threshold 0.6, IMA15 (D4) / IMA40 (D5). Not kept: nnU-Net's "epoch" is 50 batches
(here an epoch is a pass over the slices), its data augmentation, SGD with momentum 0.99
and poly learning-rate decay (here Adam 1e-3), its z-score intensity normalisation (here
[0, 1] per volume, so the paper's noise levels do not carry over in value) and the
automatic planning of the network (here the widths below are given).

Expected on the synthetic default (2-core CPU, 4 / 6 / 10 CPU-minutes; docs/fidelity.md):
clean ADI on the 64 test slices ce 0.977, adv0.5 0.967, ima 0.969 (all >= 0.8); under L2
100-PGD at eps 2.0 ADI ce 0.016, adv0.5 0.247, ima 0.447 (ADI-curve areas 0.491, 0.693,
0.744).
"""

import ml_collections

from arjax.config_lib import ConfigError
from arjax.experiment.presets import base_config, method_config, smoke_attack_steps

# data set -> (data section, U-Net widths, batch size, epochs, eps_max, adv_eps, L2 levels)
DATASETS = {
    "synthetic": (
        dict(name="synthetic_segmentation", root="", sizes=dict(train=256, val=32, test=64),
             image_size=32, num_classes=2, max_lesions=2, seed=0),
        (16, 32, 64), 32, 12, 2.0, 0.5, (0.0, 0.25, 0.5, 1.0, 1.5, 2.0),
    ),
    "heart": (
        dict(name="msd", root="", patch_size=(320, 256), split_cases=(16, 1, 3), seed=10),
        (32, 64, 128, 256, 512, 512, 512), 40, 50, 25.0, 5.0, (0, 5, 10, 15, 20, 25),
    ),
    "hippocampus": (
        dict(name="msd", root="", patch_size=(56, 40), split_cases=(208, 17, 35), seed=10),
        (32, 64, 128, 256), 366, 50, 15.0, 5.0, (0, 1, 5, 10, 15),
    ),
    "prostate": (
        dict(name="msd", root="", patch_size=(320, 320), split_cases=(25, 2, 5), seed=10,
             modality=0),
        (32, 64, 128, 256, 512, 512, 512), 32, 50, 40.0, 10.0, (0, 10, 20, 30, 40),
    ),
}  # fmt: skip
VARIANTS = "ce, adv<eps> (e.g. adv0.5), ima, ima<eps_max> (e.g. ima15)"
DATA = ("synthetic", "smoke", "heart", "hippocampus", "prostate")
DICE_THRESHOLD = 0.6  # "this threshold is set to 0.6 of the Dice index"


def segmentation_method(variant: str, eps_max: float) -> ml_collections.ConfigDict:
    """The ``method`` section of a variant (module docstring); L2, nnU-Net's Dice + CE loss."""
    if variant == "ce":
        return method_config("standard", cls_loss="dice_ce")
    if variant.startswith("ima"):
        value = eps_max if variant == "ima" else _number(variant[3:])
        if value is None or value <= 0:
            raise ConfigError(f"unknown variant {variant!r}; valid: {VARIANTS}")
        return method_config(
            "ima",
            cls_loss="dice_ce",
            eps_max=value,
            beta=0.5,
            norm="l2",
            dice_threshold=DICE_THRESHOLD,
            shrink_misclassified=True,
        )
    if variant.startswith("adv"):
        value = _number(variant[3:])
        if value is None or value <= 0:
            raise ConfigError(f"unknown variant {variant!r}; valid: {VARIANTS}")
        return method_config(
            "adversarial", cls_loss="dice_ce", r=0.5, attack=f"pgd:l2:{value!r}:20"
        )
    raise ConfigError(f"unknown variant {variant!r}; valid: {VARIANTS}")


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def get_config(arg="ima"):
    variant, _, data = (arg or "ima").partition(",")
    if variant == "smoke":
        variant, data = "ima", "smoke"
    data = data or "synthetic"
    if data not in DATA:
        raise ConfigError(f"unknown data {data!r} in variant {arg!r}; valid: {', '.join(DATA)}")
    source, widths, batch, epochs, eps_max, adv_eps, levels = DATASETS[
        "synthetic" if data == "smoke" else data
    ]
    config = base_config()
    config.name = f"segmentation_ima:{variant}" + ("" if data == "synthetic" else f",{data}")
    smoke = data == "smoke"
    config.seeds = (10,) if data in ("heart", "hippocampus", "prostate") else (0,)
    config.data = dict(source)
    # every field base_config's model section has, plus the U-Net's
    config.model = dict(
        name="unet",
        widths=widths,
        convs_per_stage=2,
        negative_slope=0.01,
        deep_supervision=False,
        input_norm="none",
        num_outputs=0,
        conv_impl="auto",
        hidden=(),
        activation="relu",
        layer_norm=(),
        dtype="float32",
    )
    config.method = segmentation_method(variant, eps_max)
    config.optim.learning_rate = 1e-3
    config.train.batch_size = batch
    config.train.num_epochs = epochs
    config.train.log_every = 8
    config.train.eval_every = 0
    config.train.checkpoint_every = 64
    config.eval.update(
        split="test",
        batch_size=64,
        adv_attack="pgd",
        adv_eps=adv_eps,
        num_steps=100,
        norm="l2",
        losses=("ce", "margin"),
        eps=tuple(float(e) for e in levels),
        eps_l2=(),
        alpha=4.0,
        localization=False,
        threshold_split="",
    )
    config.eval.dice_threshold = DICE_THRESHOLD
    if smoke:
        config.data.update(sizes=dict(train=16, test=8), image_size=16)
        config.model.widths = (4, 8)
        config.train.update(batch_size=8, num_epochs=2, log_every=1, checkpoint_every=2)
        config.eval.update(batch_size=8, num_steps=2, eps=(0.0, 0.5), adv_eps=0.5)
        smoke_attack_steps(config.method, 2)
        if "margin_update" in config.method:  # no extra compile of the epoch pass
            config.method.margin_update = "batch"
    return config
