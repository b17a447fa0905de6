"""What every training method is: a frozen dataclass of hyper-parameters with a loss.

A method is built once on the host from its config section
(:func:`from_config`, or directly: ``TRADES(beta=6.0, attack="pgd:linf:8/255:10")``).
Construction checks every field (a :class:`~arjax.config_lib.ConfigError` names
``method.<field>`` and the valid range) and computes derived fields (IMA's Δε); nothing
is written back into a config, and nothing below the experiment layer reads one.

The loss is a pure, jittable method of the object::

    value, out = method.loss(ctx, params, batch_stats, batch, state, key)

* ``ctx``: :class:`Context`, the model's pure functions and the data's bounds;
* ``batch``: ``image`` ``[B, ...]``, ``label`` ``[B]`` / ``[B, C]``, ``index`` ``[B]``;
* ``state``: the batch's rows of the method's per-example state (``None`` for a
  stateless method): every leaf of :meth:`Method.init_state`'s pytree has a leading
  ``[N_train]`` axis, and the training step gathers rows ``batch["index"]`` before the
  loss and scatters the returned rows back after it;
* returns ``(loss [], LossOutput(metrics, batch_stats, state))``.

A method that wraps another holds it as a field (AWP wraps any base method).

Adding a method is one module in ``arjax/methods/`` with a dataclass decorated by
:func:`register_method`, one import in ``arjax/methods/__init__.py``, and its tests.
:mod:`arjax.methods.sections` reads methods from config sections.

This module and the method modules import nothing numerical at import time (see
:mod:`arjax.lazy`), so config files that build ``method`` sections load without jax.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

from arjax.config_lib import ConfigError
from arjax.lazy import lazy_module
from arjax.methods.context import Context
from arjax.registry import Registry, closest

if TYPE_CHECKING:
    from arjax.attacks import AttackSpec
    from arjax.models import ModelFns
    from arjax.types import Array, Batch, PRNGKey, PyTree

_attacks = lazy_module("arjax.attacks")
_common = lazy_module("arjax.methods.common")

# Method name -> its dataclass (``method.name`` in configs).
METHODS: Registry[type[Method]] = Registry("method", "method.name")
# Classification losses a method can train with; the functions are in methods/common.py.
CLS_LOSSES = ("ce", "weighted_bce", "dice_ce")
# The config path named in field errors ("method", or "method.base" inside a wrapper).
WHERE = contextvars.ContextVar("arjax_method_where", default="method")


class LossOutput(NamedTuple):
    """What a loss returns next to its value (the ``has_aux`` part of ``value_and_grad``).

    Attributes:
      metrics: name -> scalar ``[]`` (the step adds ``loss`` and ``grad_norm``).
      batch_stats: the batch statistics after the loss's train-mode forward passes.
      state: the batch's updated rows of the method state (None when stateless).
    """

    metrics: dict
    batch_stats: Any
    state: Any = None


def register_method(name: str) -> Callable[[type], type]:
    """Class decorator: registers a :class:`Method` subclass as ``method.name = name``."""
    return METHODS.register_class(name, "name")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Method:
    """Base of every training method (fields: the classification loss).

    Attributes:
      cls_loss: the per-example classification loss: ``"ce"`` (softmax CE, or BCE for
        one logit / multi-hot labels), ``"weighted_bce"`` (Khakzar Eq. 1) or
        ``"dice_ce"`` (nnU-Net's segmentation loss).
    """

    name: ClassVar[str] = ""
    cls_loss: str = "ce"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Checks the fields; raises ConfigError naming ``method.<field>``."""
        check_choice(self, "cls_loss", CLS_LOSSES)

    def loss(
        self, ctx: Context, params: PyTree, batch_stats: PyTree, batch: Batch, state: Any,
        key: PRNGKey,
    ) -> tuple[Array, LossOutput]:  # fmt: skip
        """The method's loss on one batch (module docstring)."""
        raise NotImplementedError(f"method {self.name!r} has no loss")

    def init_state(self, num_train: int) -> PyTree | None:
        """The per-example state of a fresh run (leaves ``[num_train, ...]``), or None."""
        del num_train
        return None

    @property
    def refreshes_state(self) -> bool:
        """Whether :meth:`refresh_state` runs over the training split after each epoch."""
        return False

    def refresh_state(
        self, ctx: Context, params: PyTree, batch_stats: PyTree, batch: Batch, state: Any,
        key: PRNGKey,
    ) -> Any:  # fmt: skip
        """The batch's new state rows from the model after an epoch (IMA's Alg. 2 pass)."""
        raise NotImplementedError(f"method {self.name!r} keeps no state to refresh")

    @property
    def margin_range(self) -> tuple[float, float] | None:
        """``(floor, ceiling)`` of the per-example margins in the state, if it keeps any.

        A method whose state is ``{"margins": [N]}`` (IMA, MMA) says so here; reports
        summarise and plot those margins against this range.
        """
        return None

    def check_model(self, model: ModelFns, params: PyTree, batch_stats: PyTree) -> None:
        """Raises ConfigError when the model lacks what the method needs (before compute)."""
        del model, params, batch_stats

    def bind(self, model: ModelFns, bounds: tuple[float, float] | None) -> Callable:
        """``loss(params, batch_stats, batch, state, key)`` with the context bound."""
        return functools.partial(self.loss, Context(model, bounds))


@dataclasses.dataclass(frozen=True, kw_only=True)
class AttackMethod(Method):
    """A method that trains against one attack.

    Attributes:
      attack: the training attack, an :class:`~arjax.attacks.AttackSpec` or its text
        ``"name:norm:eps[:steps][:key=value...]"`` (:mod:`arjax.attack_syntax`; read
        into the spec at construction).
      attack_train_mode: run the attack with the batch's statistics (train mode) instead
        of the running averages (eval mode, the default).
    """

    attack: AttackSpec = "pgd:linf:0.1:20"
    attack_train_mode: bool = False

    def __post_init__(self) -> None:
        spec = _common.parse_training_attack(self.attack, _where("attack"))
        set_derived(self, "attack", spec)
        super().__post_init__()

    def adversarial(self, ctx, params, batch_stats, x, y, key, eps=None):
        """The training attack on ``x`` (``eps``: a radius overriding the spec's)."""
        return _common.attack(
            ctx, self.attack, self.attack_train_mode, params, batch_stats, x, y, key, eps
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class BoundarySearchMethod(Method):
    """A method that searches each sample's boundary with BPGD inside a radius (IMA, MMA).

    Attributes:
      num_steps: PGD steps inside the radius (N_PGD).
      num_bisections: bisection steps onto the boundary (N_binary).
      alpha: PGD step ``alpha * radius / num_steps``.
      norm: ``"linf"`` or ``"l2"``.
      attack_loss: PGD's objective, ``"ce"`` or ``"margin"``.
      random_start: start PGD from a random point of the ball.
      bracket: BPGD's bisection bracket (:data:`arjax.attacks.BRACKETS`).
      side: which end of the final bracket is returned (:data:`arjax.attacks.SIDES`).
      attack_train_mode: search with the batch's statistics (the authors' IMA code).
    """

    num_steps: int = 20
    num_bisections: int = 10
    alpha: float = 4.0
    norm: str = "linf"
    attack_loss: str = "ce"
    random_start: bool = True
    bracket: str = "clean_to_last_wrong"
    side: str = "middle"
    attack_train_mode: bool = False

    def validate(self) -> None:
        """Checks the BPGD fields."""
        super().validate()
        check_range(self, "num_steps", 1, integer=True)
        check_range(self, "num_bisections", 0, integer=True)
        check_range(self, "alpha", 0.0, lo_open=True)
        check_choice(self, "norm", _attacks.NORMS)
        check_choice(self, "attack_loss", _attacks.BPGD_LOSSES)
        check_choice(self, "bracket", _attacks.BRACKETS)
        check_choice(self, "side", _attacks.SIDES)

    def init_state(self, num_train: int) -> dict:
        """``{"margins": [num_train]}``, every margin at the floor of :attr:`margin_range`."""
        jnp = lazy_module("jax.numpy")
        return {"margins": jnp.full((num_train,), self.margin_range[0], jnp.float32)}


# --- field checks: errors name method.<field> and the valid range or choices ---------------


def _where(field: str) -> str:
    return f"{WHERE.get()}.{field}"


def check_choice(method: Method, field: str, valid: Iterable[str]) -> Any:
    """Checks that ``method.<field>`` is one of ``valid``."""
    value, valid = getattr(method, field), sorted(valid)
    if value not in valid:
        near = closest(value, [str(v) for v in valid])
        hint = f"; did you mean {near!r}?" if near is not None else ""
        raise ConfigError(
            f"unknown {_where(field)} {value!r}; valid choices: {', '.join(map(str, valid))}{hint}"
        )
    return value


def check_range(
    method: Method,
    field: str,
    lo: float | None = None,
    hi: float | None = None,
    *,
    lo_open: bool = False,
    integer: bool = False,
) -> float:
    """Checks ``lo <= method.<field> <= hi`` (``lo < ...`` when ``lo_open``)."""
    value = getattr(method, field)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{_where(field)} must be a number, got {value!r}")
    if integer and int(value) != value:
        raise ConfigError(f"{_where(field)} must be an integer, got {value!r}")
    if (lo is not None and (value <= lo if lo_open else value < lo)) or (
        hi is not None and value > hi
    ):
        left, lo_s, hi_s = "(" if lo_open else "[", "-inf" if lo is None else lo, hi
        raise ConfigError(
            f"{_where(field)}={value!r} is out of range; valid: {left}{lo_s}, "
            f"{'inf' if hi_s is None else hi_s}]"
        )
    return value


def field_error(method: Method, field: str, message: str) -> ConfigError:
    """A ConfigError ``method.<field>=value: message``."""
    return ConfigError(f"{_where(field)}={getattr(method, field)!r}: {message}")


def set_derived(method: Method, field: str, value: Any) -> None:
    """Sets a derived field of a frozen method in its ``__post_init__`` (e.g. IMA's Δε)."""
    object.__setattr__(method, field, value)
