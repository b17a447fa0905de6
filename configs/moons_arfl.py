"""ARFL two-moons experiment (Hao et al., Table 1, rows A-F) and IMA's baselines.

Run one row (5 seeds, mean (std) in report.json):
    python -m arjax.launch --config configs/moons_arfl.py:dual_arfl --workdir runs/moons_dual_arfl

Variants (Table 1 row -> variant):
    A standard            standard training
    B standard_arfl       standard training + ARFL (Eq. 2)
    C adversarial         Madry adversarial training (Eq. 4, r = 0)
    D adversarial_arfl    adversarial training + ARFL (Eq. 5, r = 0)
    E dual                dual adversarial training (Eq. 4, r = 0.5)
    F dual_arfl           dual adversarial training + ARFL (Eq. 5, r = 0.5)
    adv_eps               IMA's "adv eps" baseline: (CE(x) + CE(PGD-20(x))) / 2
    rand_eps              IMA's "rand eps" baseline: train on x + U(-eps, eps)

Setting (paper §4.1-4.2): 10,000 training / 1,000 test points, noise 0.2;
MLP 2-10-10-1 (ReLU, one binary logit); L_robust on the penultimate layer;
lambda = 0.5; FGSM eps_1 = 0.05 for training; "adversarial accuracy" is
accuracy under FGSM eps_2 = 0.2 at test; 5000 epochs; seeds 0-4. The paper
gives no optimiser or batch size; we use Adam 1e-3 with batch 500 (20 steps
per epoch, 100k steps per seed, one epoch per compiled call). The report
also holds a PGD-20 (ce + margin) robust-accuracy curve.

Expected (paper Table 1, standard / adversarial accuracy %): A 95.2/71.4,
B 93.8/73.0, C 84.4/81.8, D 84.8/81.8, E 95.8/72.6, F 96.0/79.6.
Append ``--config.train.num_epochs=N`` for a shorter run.
"""

from arjax.experiment.presets import base_config
from arjax.methods import method_config

FGSM = dict(attack="fgsm", eps=0.05)
VARIANTS = {
    "standard": lambda: method_config("standard"),
    "standard_arfl": lambda: method_config("arfl", r=1.0, lam=0.5, **FGSM),
    "adversarial": lambda: method_config("adversarial", r=0.0, **FGSM),
    "adversarial_arfl": lambda: method_config("arfl", r=0.0, lam=0.5, **FGSM),
    "dual": lambda: method_config("adversarial", r=0.5, **FGSM),
    "dual_arfl": lambda: method_config("arfl", r=0.5, lam=0.5, **FGSM),
    "adv_eps": lambda: method_config("adversarial", r=0.5, attack="pgd", eps=0.05, num_steps=20),
    "rand_eps": lambda: method_config("noise", eps=0.05),
}


def get_config(arg="dual_arfl"):
    variant = arg or "dual_arfl"
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; valid: {', '.join(VARIANTS)}")
    config = base_config()
    config.name = f"moons_arfl:{variant}"
    config.seeds = (0, 1, 2, 3, 4)
    config.data.sizes = dict(train=10000, test=1000)
    config.data.noise = 0.2
    config.model.hidden = (10, 10)
    config.method = VARIANTS[variant]()
    config.optim.learning_rate = 1e-3
    config.train.batch_size = 500
    config.train.num_epochs = 5000
    config.train.steps_per_call = 20
    config.train.log_every = 2000
    config.train.eval_every = 20000
    config.train.checkpoint_every = 20000
    config.eval.adv_attack = "fgsm"
    config.eval.adv_eps = 0.2
    return config
