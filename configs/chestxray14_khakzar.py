"""Khakzar et al. (seed 002): truncated DenseNet-121 on NIH ChestX-ray14, FGSM robust optimisation.

Expected data layout (never downloaded; --config.data.root=/path/to/chestxray14):
    Data_Entry_2017.csv  BBox_List_2017.csv  train_val_list.txt  test_list.txt  images/*.png

Two phases as two runs (§3.2: train clean until the validation loss stops
improving, then continue with the adversarial loss; keep the checkpoint with
the lowest validation loss):
    python -m arjax.launch --config configs/chestxray14_khakzar.py:clean --workdir runs/cxr_clean \
        --config.data.root=$CXR
    python -m arjax.launch --config configs/chestxray14_khakzar.py:fgsm0.005 \
        --workdir runs/cxr_fgsm --config.data.root=$CXR --config.train.init_from=runs/cxr_clean

Variants: ``clean``; ``fgsm<eps>`` for eps in {0.001, 0.005, 0.01, 0.05} (FGSM on
a random half of each batch, r = 0, perturb_fraction = 0.5); append ``,smoke``
(or use ``smoke``) for a seconds-long run on the built-in synthetic lesions
(multi-label, 3 classes, 32x32). Setting: weighted BCE (Eq. 1, beta =
#neg/#pos in the batch), SGD lr 0.01 momentum 0.9, batch 32, no weight decay
or dropout, 224x224 grayscale, ImageNet weights optional
(--config.model.pretrained=densenet121.safetensors). Expect per-class AUC
close to the paper's Fig. 2 (mean ~0.8) for the clean model.
"""

from arjax.config_lib import base_config, lesion_smoke
from arjax.methods import method_config

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
            attack="fgsm",
            eps=eps,
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
        name="densenet121_truncated", pretrained="", num_outputs=0, conv_impl="auto"
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
    config.train.select_best = "val/loss"
    config.eval.batch_size = 64
    config.eval.adv_attack = "fgsm"
    config.eval.adv_eps = 0.005
    config.eval.num_steps = 10
    config.eval.eps = (0.0, 0.001, 0.005, 0.01)
    config.eval.max_examples = 2000
    if modifier == "smoke":
        lesion_smoke(config, num_classes=3, multi_label=True, eps=0.005)
    elif modifier:
        raise ValueError(f"unknown modifier {modifier!r}; valid: smoke")
    return config
