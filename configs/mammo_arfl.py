"""ARFL on mammograms (Hao et al., seed 003, Tables 2-3 and Fig. 4): VGG16 from ImageNet weights.

Expected data: a CSV manifest (--config.data.manifest=/path/manifest.csv) with columns
    path,label,patient_id,fold      (label benign/malignant or 0/1; fold 0-4)
images PNG/JPEG or DICOM (pip install 'arjax[medical]'), e.g. CMMD exported to PNG.
ImageNet weights: torchvision's vgg16 state dict as .safetensors (or .pth with torch):
    --config.model.pretrained=/path/vgg16.safetensors

Run the five folds (folds=5, cv.mode="manifest": fold k tests on the manifest's
fold k and validates on fold k+1 mod 5; runs in runs/mammo_F/fold_<k>, AUC mean (std)
over folds in runs/mammo_F/report.json):
    python -m arjax.launch --config configs/mammo_arfl.py:dual_arfl --workdir runs/mammo_F \
        --config.data.manifest=$M --config.model.pretrained=$W
One fold only: --config.folds=0 --config.data.test_fold=2 --config.data.val_fold=3.
Without a fold column: --config.cv.mode=kfold --config.cv.holdout=test
--config.data.test_fraction=0 (a fixed patient-grouped 10 % validation split; the
rest dealt into 5 stratified patient-grouped folds, each the test set once).

Variants: ``r<r>`` / ``r<r>_arfl`` for r in {1, 0, 0.5, 0.25, 0.75} (e.g. r0.25_arfl),
and the Table rows' names ``standard``, ``standard_arfl``, ``adversarial``,
``adversarial_arfl``, ``dual``, ``dual_arfl``, and the compared methods (§4.2,
Tables 2-3 rows G-I) ``dsbn``, ``trades``, ``mirst``; append ``,smoke`` (or
``smoke``) for a seconds-long run on built-in synthetic lesions (binary, 32x32).

Compared methods (the paper gives no settings beyond PGD; arjax uses the rows'
PGD-7 eps_1 = 0.01, alpha 2.5, r = 0.5 where a mix applies):
    G dsbn     dual batch norm, clean and adversarial branches (separate statistics
               and affine parameters), PGD-7 through the adversarial branch, the
               clean branch at test. torchvision's VGG16 has no batch norm, so the
               nearest faithful form is used: VGG16 with batch norm (torchvision's
               vgg16_bn, --config.model.pretrained=/path/vgg16_bn.safetensors) with
               every BatchNorm made dual, fine-tuning the classifier and the last
               convolution with its (dual) batch norm (optim.trainable = classifier,
               features/40, features/41); the frozen layers' running statistics
               still follow each branch's own data.
    H trades   TRADES, beta = 6, PGD-7 on the KL.
    I mirst    MIRST, PGD-7 instances at eps_1 * (1/3, 2/3, 1), self-training beta = 1.
Expected AUC % (standard / adversarial, mean), Institution A (Table 2): A 69.2/58.8
(64.0), B 70.0/58.3 (64.2), C 61.7/56.9 (59.3), D 62.5/59.2 (60.9), E 65.7/59.6
(62.7), F 69.3/67.8 (68.6), G DSBN 54.1/54.7 (54.4), H TRADES 63.7/63.2 (63.4),
I MIRST 63.0/63.6 (63.3). CMMD (Table 3): A 64.9/41.5 (53.2), B 64.9/41.5 (53.2),
C 45.5/43.7 (44.6), D 48.6/45.7 (47.15), E 67.8/66.3 (67.0), F 68.8/67.3 (68.1),
G 54.7/55.5 (55.1), H 64.8/61.9 (63.4), I 64.4/64.8 (64.6). In both, F ranks first
and DSBN last among the compared methods.
Setting: fine-tune the fully connected layers and the last convolution
(optim.trainable), PGD-7 eps_1 = 0.01 for training, PGD-7 eps_2 = 1e-4 at test
(the paper's "attacking perturbation budget"; the curve also covers 0.005-0.02),
both with the step rule alpha * eps / steps, alpha = 2.5,
lambda = 10, 100 epochs, AUC as the metric, 5-fold cross-validation by the
manifest's fold column (one run per test fold). The smoke variant runs one fold.
"""

from arjax.experiment.presets import base_config, lesion_smoke, method_config, smoke_attack_steps

ROWS = {
    "standard": "r1",
    "standard_arfl": "r1_arfl",
    "adversarial": "r0",
    "adversarial_arfl": "r0_arfl",
    "dual": "r0.5",
    "dual_arfl": "r0.5_arfl",
}
PGD7 = dict(attack="pgd:linf:0.01:7:alpha=2.5")
COMPARED = {
    "dsbn": lambda: method_config("dsbn", r=0.5, **PGD7),
    "trades": lambda: method_config("trades", beta=6.0, attack="pgd:linf:0.01:7:loss=kl:alpha=2.5"),
    "mirst": lambda: method_config("mirst", **PGD7),
}


def _method(variant):
    if variant in COMPARED:
        return COMPARED[variant]()
    spec = ROWS.get(variant, variant)
    arfl = spec.endswith("_arfl")
    try:
        r = float(spec.removesuffix("_arfl")[1:]) if spec.startswith("r") else None
    except ValueError:
        r = None
    if r not in (1.0, 0.0, 0.5, 0.25, 0.75):
        raise ValueError(
            f"unknown variant {variant!r}; valid: {', '.join([*ROWS, *COMPARED])}, "
            "r<r>[_arfl] for r in 1, 0, 0.5, 0.25, 0.75"
        )
    if arfl:
        return method_config("arfl", r=r, lam=10.0, **PGD7)
    return method_config("adversarial", r=r, **PGD7)


def get_config(arg="dual_arfl"):
    variant, _, modifier = (arg or "dual_arfl").partition(",")
    if variant == "smoke":
        variant, modifier = "dual_arfl", "smoke"
    config = base_config()
    config.name = f"mammo_arfl:{variant}"
    config.data = dict(
        name="csv_manifest",
        manifest="",
        image_size=224,
        channels=3,
        test_fold=0,
        val_fold=1,
        seed=0,
        cache_dir="",
    )
    config.folds = 5
    config.cv = dict(mode="manifest", holdout="val")
    config.model = dict(
        name="vgg16", pretrained="", num_outputs=1, conv_impl="auto", dtype="float32"
    )
    config.method = _method(variant)
    config.optim.name = "adam"
    config.optim.learning_rate = 1e-4
    config.optim.trainable = ("classifier", "features/28")
    config.train.batch_size = 32
    config.train.num_epochs = 100
    config.train.num_workers = 2
    config.train.log_every = 20
    config.train.eval_every = 200
    config.train.checkpoint_every = 200
    config.eval.batch_size = 32
    config.eval.adv_attack = "pgd"
    config.eval.adv_eps = 1e-4  # eps_2 of §4.1: "visually imperceptible" test attacks
    config.eval.num_steps = 7
    config.eval.alpha = 2.5  # the training PGD's step rule (the paper gives none for either)
    config.eval.eps = (0.0, 1e-4, 0.005, 0.01, 0.02)
    if variant == "dsbn":  # torchvision's vgg16_bn, every batch norm dual (see the docstring)
        config.model.update(batch_norm=True, dual_batch_norm=True)
        config.optim.trainable = ("classifier", "features/40", "features/41")
    if modifier == "smoke":
        lesion_smoke(config)
        config.folds = 0  # one fold: seconds (the five-fold run is 5x this)
        config.model.hidden = 64  # a small classifier: seconds, not minutes, on CPU
        smoke_attack_steps(config.method, 2)
        if config.method.name == "mirst":  # two instance levels: fewer batch shapes to compile
            config.method.levels = (0.5, 1.0)
    elif modifier:
        raise ValueError(f"unknown modifier {modifier!r}; valid: smoke")
    return config
