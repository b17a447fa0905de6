"""IMA on COVID-19 CT (Ma et al., seed 004): ResNet-18 with instance norm, 224x224.

Expected data layout (SARS-CoV-2 CT-scan set; --config.data.root=/path):
    COVID/*.png  non-COVID/*.png      (split: 200 test + 30 val per class, rest train; seeded)

Run:
    python -m arjax.launch --config configs/covid_ct_ima.py:ima --workdir runs/covid_ima \
        --config.data.root=$COVID_CT

Variants: ``ce``, ``adv<eps>`` (e.g. adv0.1), ``rand<eps>``, ``ima`` (eps_max 0.3),
``trades<beta>`` (e.g. trades6; eps 0.3, 20-PGD steps), ``mma<d_max>`` (e.g. mma0.3);
append ``,smoke`` (or ``smoke``) for a seconds-long run on built-in synthetic
lesions (binary, 32x32). Setting: ResNet-18 with InstanceNorm and a 2-way
output, Adam (``ce``: AdamW, weight decay 0.01), batch 32, 100 epochs; 100-PGD
(ce + margin) evaluation on L-inf noise levels 0-0.3 (Fig. 9) and L2 levels, and
the paper's uniform white-noise test at 0.05 (``noise:linf:0.05``; the paper found
2.75 % of noisy samples misclassified by its ``ce`` model).
"""

from arjax.experiment.presets import (
    base_config,
    ima_experiment_method,
    lesion_smoke,
    smoke_attack_steps,
)


def get_config(arg="ima"):
    variant, _, modifier = (arg or "ima").partition(",")
    if variant == "smoke":
        variant, modifier = "ima", "smoke"
    config = base_config()
    config.name = f"covid_ct_ima:{variant}"
    config.data = dict(name="covid_ct", root="", image_size=224, channels=1, seed=0, cache_dir="")
    config.model = dict(
        name="resnet18",
        norm="instance",
        pretrained="",
        num_outputs=2,
        conv_impl="auto",
        dtype="float32",
    )
    config.method = ima_experiment_method(variant)
    config.optim.learning_rate = 1e-3
    config.train.batch_size = 32
    config.train.num_epochs = 100
    config.train.num_workers = 2
    config.train.log_every = 20
    config.train.eval_every = 200
    config.train.checkpoint_every = 200
    config.eval.batch_size = 32
    if variant == "ce":  # "For ce, weight decay of 0.01 is applied with Adam (i.e., AdamW)"
        config.optim.name = "adamw"
        config.optim.weight_decay = 0.01
    config.eval.num_steps = 100
    # the adversarial metrics (100-PGD at 0.01) and the paper's white-noise test
    config.eval.attacks = ("pgd:linf:0.01", "noise:linf:0.05")
    config.eval.eps = (0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3)  # Fig. 9
    config.eval.eps_l2 = (0.0, 0.5, 1.0, 2.0)
    if modifier == "smoke":
        lesion_smoke(config)
        smoke_attack_steps(config.method)
    elif modifier:
        raise ValueError(f"unknown modifier {modifier!r}; valid: smoke")
    return config
