"""Built-in medical demo: synthetic X-ray-like images with lesion boxes, no download.

Run:
    python -m arjax.launch --config configs/synthetic_lesions.py --workdir runs/lesions
    python -m arjax.launch --config configs/synthetic_lesions.py:fgsm --workdir runs/lesions_fgsm

The data are written once (PNGs + manifest CSV + box CSV under data.root, default
runs/data/synthetic_lesions/...) and read back through the CSV-manifest
reader, exactly as a real data set would be. Task: does the image hold a
lesion (binary, one logit). Model: ``cam_cnn`` (three conv stages 16-32-64,
global average pooling, linear head) at 64x64: its 16x16 last feature map
makes CAM localisation meaningful and a CPU trains it in about a minute
(ResNet-18 ends in a 2x2 map here; --config.model.name=resnet18 uses it
anyway, or see the paper configs' smoke variants for the papers' networks).
Variants:
``clean`` (standard training), ``fgsm`` (Khakzar's two-phase schedule: clean
training with early stopping, then FGSM on half of each batch, eps 0.01, from
the best clean state), ``arfl`` (dual adversarial + ARFL), ``smoke`` (tiny,
seconds). Expect clean ROC-AUC well above 0.9 for ``clean`` after the default
epochs.

Five-fold cross-validation over the manifest's patient folds (fold k tests,
fold k+1 validates; runs in runs/lesions_cv/fold_<k>, mean (std) in report.json):
    python -m arjax.launch --config configs/synthetic_lesions.py --workdir runs/lesions_cv \
        --config.folds=5 --config.cv.mode=manifest
"""

from arjax.experiment.presets import base_config, lesion_smoke, method_config

VARIANTS = {
    "clean": lambda: method_config("standard"),
    "fgsm": lambda: method_config(
        "adversarial", r=0.0, perturb_fraction=0.5, attack="fgsm:linf:0.01"
    ),
    "arfl": lambda: method_config("arfl", r=0.5, lam=1.0, attack="fgsm:linf:0.01"),
}


def get_config(arg="clean"):
    variant, _, modifier = (arg or "clean").partition(",")
    if variant == "smoke":
        variant, modifier = "clean", "smoke"
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; valid: {', '.join(VARIANTS)}, smoke")
    config = base_config()
    config.name = f"synthetic_lesions:{variant}"
    config.data = dict(
        name="synthetic_lesions", num_images=600, image_size=64, num_classes=2, seed=0, root=""
    )
    config.model = dict(
        name="cam_cnn", widths=(16, 32, 64), num_outputs=1, conv_impl="auto", dtype="float32"
    )
    config.method = VARIANTS[variant]()
    config.optim.name = "adam"
    config.optim.learning_rate = 1e-3
    config.train.batch_size = 32
    config.train.num_epochs = 8
    config.train.log_every = 10
    config.train.eval_every = 30
    config.train.checkpoint_every = 30
    config.train.best = dict(metric="val/loss", mode="min", patience=0)
    if variant == "fgsm":
        config.train.update(phases="two_phase", phase1_max_epochs=8)
        config.train.best.patience = 3
    config.eval.batch_size = 64
    config.eval.adv_attack = "fgsm"
    config.eval.adv_eps = 0.01
    config.eval.num_steps = 10
    config.eval.eps = (0.0, 0.005, 0.01, 0.02)
    if modifier == "smoke":
        lesion_smoke(config)
    elif modifier:
        raise ValueError(f"unknown modifier {modifier!r}; valid: smoke")
    return config
