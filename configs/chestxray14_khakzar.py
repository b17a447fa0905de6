"""Khakzar et al. (seed 002): truncated DenseNet-121 on NIH ChestX-ray14, FGSM robust optimisation.

Expected data layout (never downloaded; --config.data.root=/path/to/chestxray14):
    Data_Entry_2017.csv  BBox_List_2017.csv  train_val_list.txt  test_list.txt  images/*.png

Run (§3.2 and §4 as one resumable run, train.phases="two_phase"): phase 1 trains
clean until the validation loss has not improved for train.best.patience=5 evaluations
(one every 1000 steps; at most phase1_max_epochs=10), phase 2 fine-tunes with FGSM
from phase 1's lowest-validation-loss checkpoint, stops the same way (at most
num_epochs=10), and the final model is phase 2's lowest-validation-loss state:
    python -m arjax.launch --config configs/chestxray14_khakzar.py:fgsm0.005 \
        --workdir runs/cxr_fgsm --config.data.root=$CXR
The clean baseline is phase 1 alone (single schedule, same early stopping):
    python -m arjax.launch --config configs/chestxray14_khakzar.py:clean --workdir runs/cxr_clean \
        --config.data.root=$CXR
Outputs: runs/cxr_fgsm/phase1/ (clean phase: checkpoints, best, metrics, curves),
schedule.json (where each phase stopped and its best step), report.json.

Variants: ``clean``; ``fgsm<eps>`` for eps in {0.001, 0.005, 0.01, 0.05} (FGSM on
a random half of each batch, r = 0, perturb_fraction = 0.5); append ``,smoke``
(or use ``smoke``) for a seconds-long run on the built-in synthetic lesions
(multi-label, 3 classes, 32x32). Setting: weighted BCE (Eq. 1, beta =
#neg/#pos in the batch), SGD lr 0.01 momentum 0.9, batch 32, no weight decay
or dropout, 224x224 grayscale, ImageNet weights optional
(--config.model.pretrained=densenet121.safetensors). Expect per-class AUC
close to the paper's Fig. 2 (mean ~0.8) for the clean model.
"""

from arjax.experiment.presets import base_config, lesion_smoke, method_config

EPS = (0.001, 0.005, 0.01, 0.05)


def _method(variant):
    if variant == "clean":
        return method_config("standard", cls_loss="weighted_bce")
    if variant.startswith("fgsm"):
        eps = float(variant[4:])
        if eps not in EPS:
            raise ValueError(f"unknown eps {eps}; the paper's: {EPS}")
        return method_config(
            "adversarial",
            cls_loss="weighted_bce",
            r=0.0,
            perturb_fraction=0.5,
            # Eq. 2 differentiates the training loss of Eq. 1
            attack=f"fgsm:linf:{eps!r}:loss=weighted_bce",
        )
    raise ValueError(f"unknown variant {variant!r}; valid: clean, fgsm0.001, fgsm0.005, ...")


def get_config(arg="fgsm0.005"):
    variant, _, modifier = (arg or "fgsm0.005").partition(",")
    if variant == "smoke":
        variant, modifier = "fgsm0.005", "smoke"
    config = base_config()
    config.name = f"chestxray14_khakzar:{variant}"
    config.data = dict(
        name="chestxray14", root="", image_size=224, val_fraction=0.1, seed=0, cache_dir=""
    )
    config.model = dict(
        name="densenet121_truncated",
        pretrained="",
        num_outputs=0,
        conv_impl="auto",
        dtype="float32",
    )
    config.method = _method(variant)
    config.optim.name = "sgd"
    config.optim.learning_rate = 0.01
    config.optim.momentum = 0.9
    config.train.batch_size = 32
    config.train.num_epochs = 10
    config.train.num_workers = 2
    config.train.log_every = 50
    config.train.eval_every = 1000
    config.train.checkpoint_every = 1000
    config.train.best = dict(metric="val/loss", mode="min", patience=5)
    config.train.phase1_max_epochs = 10
    config.train.phases = "single" if variant == "clean" else "two_phase"
    config.eval.batch_size = 64
    config.eval.adv_attack = "fgsm"
    config.eval.adv_eps = 0.005
    config.eval.num_steps = 10
    config.eval.eps = (0.0, 0.001, 0.005, 0.01)
    config.eval.max_examples = 2000
    if modifier == "smoke":
        lesion_smoke(config, num_classes=3, multi_label=True, eps=0.005)
        config.train.phase1_max_epochs = 1
    elif modifier:
        raise ValueError(f"unknown modifier {modifier!r}; valid: smoke")
    return config
