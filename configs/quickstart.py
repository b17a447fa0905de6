"""Quickstart: dual adversarial training with ARFL on two-moons, in about a minute.

Run:
    python -m arjax.launch --config configs/quickstart.py --workdir runs/quickstart

Trains a 2-32-32-1 MLP on 4000 two-moons points (noise 0.2) for 40 epochs with
ARFL Eq. 5 (r = 0.5, lambda = 0.5, FGSM eps_1 = 0.05), then reports clean
accuracy, FGSM eps_2 = 0.2 accuracy and a PGD-20 (ce + margin) robust-accuracy
curve. Expect clean accuracy ~0.95+ and FGSM-0.2 accuracy well above a
standard model's. Writes report.json, decision_boundary.png,
accuracy_vs_eps.png and training_curves.png in the workdir.
"""

from arjax.experiment.presets import base_config, method_config


def get_config(arg=None):
    del arg
    config = base_config()
    config.name = "quickstart: moons, dual adversarial + ARFL"
    config.data.sizes = dict(train=4000, test=1000)
    config.model.hidden = (32, 32)
    config.method = method_config("arfl", r=0.5, lam=0.5, attack="fgsm:linf:0.05")
    config.optim.learning_rate = 3e-3
    config.train.batch_size = 128
    config.train.num_epochs = 40
    config.train.steps_per_call = 31
    config.train.log_every = 31
    config.train.eval_every = 310
    config.train.checkpoint_every = 310
    return config
