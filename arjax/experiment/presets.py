"""Experiment presets: the config every experiment starts from, and the papers' variants.

``configs/*.py`` build on these (DESIGN §3.8: configs are data). They live above
``arjax.methods`` (they name methods), unlike ``arjax.config_lib``, which every layer uses.
"""

import ml_collections

from arjax import attack_syntax
from arjax.config_lib import ConfigError
from arjax.methods.sections import default_section


def method_config(name: str, **overrides) -> ml_collections.ConfigDict:
    """A ``method`` config section: the method's defaults updated by ``overrides``.

    The training attack is one spec, ``attack="pgd:linf:0.1:20"``; the older separate
    fields (``attack="pgd", eps=0.1, num_steps=20, ...``) are read into it. Values are
    checked when the run builds the method (``arjax.methods.from_config``).

    Raises:
      ConfigError: an unknown method or field, naming the nearest.
    """
    return ml_collections.ConfigDict(default_section(name, **overrides))


def base_config() -> ml_collections.ConfigDict:
    """Every section an experiment config has, with neutral defaults.

    Config files start from this and change what their experiment needs::

        config = base_config()
        config.method = method_config("arfl", r=0.5, lam=0.5)

    Top-level ``seeds`` (one run per seed) and ``folds`` (0: none; k >= 2:
    one run per cross-validation fold, formed as ``cv`` says, see
    ``arjax.data.folds``).

    Sections: ``data`` (dataset by name), ``model`` (network by name),
    ``method`` (training method by name, see ``arjax.methods``), ``optim``,
    ``train`` (batching, epochs, logging/eval/checkpoint intervals in steps,
    ``steps_per_call`` steps fused into one compiled call; ``phases``
    ``"single"`` or Khakzar's ``"two_phase"``, see ``arjax.experiment.phases``; ``best``,
    the best-checkpoint policy with early stopping), ``evals`` (the evaluators run
    during training, see ``arjax.evaluation.evaluators``), ``eval`` (final
    evaluation: clean metrics, metrics under each attack of ``attacks`` (or
    the one at ``adv_eps``) for "adversarial accuracy / AUC", sensitivity and
    specificity at a threshold chosen on ``threshold_split``, the
    robust-accuracy-vs-eps curve with ``curve_attack``, and the gradient-masking
    checks of ``masking_checks``; see ``arjax.evaluation.suite``).
    """
    c = ml_collections.ConfigDict()
    c.name = ""
    c.seeds = (0,)
    # k-fold cross-validation: 0 = none, k >= 2 = one run per fold
    c.folds = 0
    # mode "kfold": sklearn folds of the train split, fold k becomes split `holdout`;
    # "manifest": fold k tests on the manifest's fold k, validates on fold k+1 (mod folds)
    c.cv = dict(mode="kfold", holdout="val")
    c.data = dict(name="moons", sizes=dict(train=10000, test=1000), noise=0.2, seed=0)
    # layer_norm: per-hidden-layer flags, () for none; num_outputs: 0 = 1 logit for
    # two classes, else one per class; conv_impl: "auto", "xla" or "patches" for every
    # convolution (arjax.models.layers.conv2d); dtype: compute dtype, "float32" or
    # "bfloat16" (mixed precision, arjax.models.precision).
    c.model = dict(
        name="mlp",
        hidden=(10, 10),
        activation="relu",
        layer_norm=(),
        num_outputs=0,
        conv_impl="auto",
        dtype="float32",
    )
    c.method = method_config("standard")
    c.optim = dict(
        name="adam",
        learning_rate=1e-3,
        momentum=0.9,
        weight_decay=0.0,
        schedule="constant",
        warmup_steps=0,
        # regexes over parameter paths to fine-tune; () trains everything
        trainable=(),
    )
    c.train = dict(
        batch_size=128,
        num_epochs=10,
        steps_per_call=1,
        log_every=100,
        eval_every=0,
        checkpoint_every=1000,
        max_checkpoints=2,
        num_devices=0,
        # grain worker processes decoding file-backed data (0: in the host loop)
        num_workers=0,
        # the best-checkpoint policy: keep the state with the best value of `metric`
        # ("<evaluator>/<metric>" of `evals`, e.g. "val/loss", "val_pgd/accuracy"; "" off)
        # by `mode` ("min" / "max") and evaluate it at the end; stop a phase after
        # `patience` evaluations without improvement (0: never)
        best=dict(metric="", mode="min", patience=0),
        # a finished run's workdir to take parameters from
        init_from="",
        # "single": method for num_epochs; "two_phase" (Khakzar §3.2): clean training
        # (standard, same cls_loss) for <= phase1_max_epochs, then the method for
        # <= num_epochs from the best phase-1 state
        phases="single",
        phase1_max_epochs=10,
        # host/device overlap: calls whose batches are read and put on the devices ahead
        # (a background thread), metrics fetched one call late; 0: synchronous loop
        prefetch=2,
        # train all seeds as one vmapped state in one compiled step (arjax.experiment.stacked)
        vmap_seeds=False,
        # JAX's persistent compilation cache (arjax.compilation_cache): "auto" (next to
        # the workdir, or $ARJAX_CACHE_DIR), "off", or a directory
        compilation_cache="auto",
    )
    # evaluators run during training, by name: {name: {type, split, every, ...}}
    # (arjax.evaluation.evaluators: "classification", "robust"); their metrics go to
    # metrics.jsonl as "<name>/<metric>". Empty: one classification evaluator on the
    # val split (else test) every train.eval_every steps, named after its split.
    c.evals = {}
    c.eval = dict(
        split="test",
        batch_size=1000,
        adv_attack="fgsm",
        adv_eps=0.2,
        num_steps=20,
        norm="linf",
        losses=("ce", "margin"),
        eps=(0.0, 0.05, 0.1, 0.2, 0.3),
        eps_l2=(),
        alpha=4.0,
        # evaluate attacks on the first N examples of the split (0: all)
        max_examples=0,
        # attacks for the per-attack metrics, "attack:norm:eps[:steps]" such as
        # "pgd:linf:0.01:100"; () uses the single adv_attack / norm / adv_eps attack
        attacks=(),
        # split whose clean predictions pick the sensitivity/specificity threshold
        # (Youden's J); a dataset without it uses 0.5
        threshold_split="val",
        # CAM localisation against the split's boxes (Khakzar §3.3) when it has
        # boxes and the network a GAP + linear head
        localization=True,
        # attack of the robust curves: "auto" (the first APGD / AutoAttack attack of
        # `attacks`, else PGD), "pgd" (IMA: PGD with each of `losses`) or any attack name
        curve_attack="auto",
        # gradient-masking sanity checks (Carlini et al. 2019) in the report: "auto"
        # (for APGD / AutoAttack attacks), "all" (every attack) or "off"; on the first
        # masking_examples examples, with masking_steps APGD iterations
        masking_checks="auto",
        masking_examples=256,
        masking_steps=20,
    )
    return c


# The IMA paper's comparison setting: "maximum noise level 0.3 for IMA, MMA and TRADES";
# TRADES takes the iterations and step size of the 20-PGD (alpha 4), MMA 20 PGD iterations.
IMA_MAX_NOISE = 0.3
IMA_VARIANTS = (
    "ce, ima, adv<eps> (e.g. adv0.1), rand<eps>, trades[<beta>] (e.g. trades1, trades6), "
    "mma[<d_max>] (e.g. mma0.1, mma0.3)"
)


def _number_suffix(variant: str, prefix: str) -> float | None:
    """The number after ``prefix`` in ``variant`` (None when it is not one)."""
    try:
        return float(variant[len(prefix) :])
    except ValueError:
        return None


def ima_experiment_method(variant: str) -> ml_collections.ConfigDict:
    """The ``method`` section of an IMA-paper experiment variant.

    ``ce`` (clean training), ``adv<eps>`` (the paper's "adv eps": (CE(x) +
    CE(PGD-20(x))) / 2 with alpha 4, e.g. ``adv0.1``), ``rand<eps>`` (uniform
    noise), ``ima`` (Alg. 1-3 with eps_max 0.3, beta 0.5), and the baselines of
    its Figs. 6-9: ``trades<beta>`` (TRADES at eps 0.3 with the 20-PGD's steps,
    ``beta`` the weight of the KL term: the TRADES paper's ``1/lambda``, which it
    reports at 1 and 6; bare ``trades`` is beta 6) and ``mma<d_max>`` (MMA with
    hinge ``d_max``; bare ``mma`` is the paper's 0.3).

    Raises:
      ConfigError: an unknown variant, naming the valid ones.
    """
    if variant == "ce":
        return method_config("standard")
    if variant == "ima":
        return method_config("ima", eps_max=IMA_MAX_NOISE, beta=0.5)
    for prefix in ("adv", "rand", "trades", "mma"):
        if not variant.startswith(prefix):
            continue
        bare = variant == prefix and prefix in ("trades", "mma")
        value = None if bare else _number_suffix(variant, prefix)
        if value is None and not bare:
            break
        if prefix == "rand":
            return method_config("noise", eps=value)
        if prefix == "adv":  # PGD-20, alpha 4 (the registry's default step rule)
            return method_config("adversarial", r=0.5, attack=f"pgd:linf:{value!r}:20")
        if prefix == "trades":
            beta = {} if bare else {"beta": value}
            attack = f"pgd:linf:{IMA_MAX_NOISE!r}:20:loss=kl"
            return method_config("trades", attack=attack, **beta)
        return method_config("mma", d_max=IMA_MAX_NOISE if bare else value, num_steps=20)
    raise ConfigError(
        f"unknown variant {variant!r}; valid: {IMA_VARIANTS}, each optionally with "
        "',smoke'; or 'smoke'"
    )


def smoke_attack_steps(method: ml_collections.ConfigDict, steps: int = 3) -> None:
    """Cuts a method's training attack to ``steps`` PGD (and bisection) steps, in place.

    For the seconds-long ``smoke`` variants, where every attack step is another forward
    and backward pass of the network. Acts on the ``attack`` spec's steps and on IMA's /
    MMA's ``num_steps`` and ``num_bisections``.
    """
    for field in ("num_steps", "num_bisections"):
        if field in method:
            method[field] = min(method[field], steps)
    if "attack" in method:
        _, _, _, now, _ = attack_syntax.split_spec(method.attack)
        if now is not None and int(now) > steps:
            method.attack = attack_syntax.with_steps(method.attack, steps)


def ima_image_config(arg: str, *, tfds_name: str, model_variant: str, image_shape: tuple):
    """Config of the IMA paper's Fashion-MNIST / SVHN experiments.

    Paper setting: the paper's CNN (``model.variant``), 60 epochs, batch 128,
    Adam with default parameters, eps_max 0.3, 100-PGD evaluation with
    cross-entropy and margin losses (L-inf and L2 noise levels). Data from
    TFDS prepared locally (``--config.data.data_dir``); 90/10 train/val split
    of the TFDS train split. ``<variant>,smoke`` (or ``smoke``) runs on built-in
    synthetic images of the same shape in seconds.

    Args:
      arg: ``<variant>[,smoke]`` with a variant of :func:`ima_experiment_method`.
      tfds_name: ``"fashion_mnist"`` or ``"svhn_cropped"``.
      model_variant: ``"fmnist"`` or ``"svhn"``.
      image_shape: ``(H, W, C)`` of the data (for the smoke data).
    """
    variant, _, modifier = (arg or "ima").partition(",")
    if variant == "smoke":
        variant, modifier = "ima", "smoke"
    config = base_config()
    config.name = f"{tfds_name}_ima:{variant}"
    config.data = dict(
        name="tfds",
        tfds_name=tfds_name,
        data_dir=None,
        splits=dict(train="train[:90%]", val="train[90%:]", test="test"),
        max_examples=0,
    )
    config.model = dict(name="ima_cnn", variant=model_variant, conv_impl="auto", dtype="float32")
    config.method = ima_experiment_method(variant)
    config.optim.learning_rate = 1e-3
    config.train.batch_size = 128
    config.train.num_epochs = 60
    config.train.steps_per_call = 1
    config.train.log_every = 100
    config.train.eval_every = 1000
    config.train.checkpoint_every = 1000
    config.eval.adv_attack = "pgd"
    config.eval.adv_eps = 0.1
    config.eval.num_steps = 100
    config.eval.batch_size = 500
    config.eval.eps = (0.0, 0.05, 0.1, 0.2, 0.3)
    config.eval.eps_l2 = (0.0, 0.5, 1.0, 2.0, 3.0)
    if modifier == "smoke":
        config.name += ",smoke"
        config.data = dict(
            name="synthetic_images",
            sizes=dict(train=64, val=32, test=32),
            image_shape=tuple(image_shape),
            num_classes=10,
            noise=0.1,
            seed=0,
        )
        config.train.batch_size = 16
        config.train.num_epochs = 2
        config.train.log_every = 4
        config.train.eval_every = 8
        config.train.checkpoint_every = 8
        config.eval.num_steps = 3
        config.eval.batch_size = 32
        config.eval.eps = (0.0, 0.1)
        config.eval.eps_l2 = (0.0, 1.0)
        smoke_attack_steps(config.method)
    elif modifier:
        raise ConfigError(f"unknown modifier {modifier!r}; valid: smoke")
    return config


def lesion_smoke(
    config: ml_collections.ConfigDict,
    *,
    num_classes: int = 2,
    multi_label: bool = False,
    eps: float = 0.01,
) -> ml_collections.ConfigDict:
    """Turns a medical config into its seconds-scale ``smoke`` variant, in place.

    Swaps the data for 80 built-in synthetic lesion images at 32x32 (no
    download), trains one epoch of batch 8 in the host loop, and evaluates with
    2-step cross-entropy attacks at ``eps`` (L-inf curve only); the model and
    method stay the experiment's.
    """
    config.name += ",smoke"
    config.data = dict(
        name="synthetic_lesions",
        num_images=80,
        image_size=32,
        num_classes=num_classes,
        multi_label=multi_label,
        seed=0,
    )
    config.train.update(
        batch_size=8, num_epochs=1, num_workers=0, log_every=2, eval_every=4, checkpoint_every=4
    )
    # One attack loss and no L2 curve: each is another compile of the network's attack
    # (~5 s for ResNet/DenseNet on CPU); the moons/IMA smoke runs cover both.
    config.eval.update(
        batch_size=16, num_steps=2, eps=(0.0, eps), max_examples=0, losses=("ce",), eps_l2=()
    )
    return config
