"""Methods from config sections and back: ``method.name`` plus the method's fields.

:func:`from_config` builds the method a section describes (checked, derived fields
computed), reading the attack fields of older configs into the one ``attack`` spec;
:func:`default_section` gives a method's fields with their defaults for config files
(without importing jax); :func:`method_section` writes a method back as a section.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from arjax import attack_syntax
from arjax.config_lib import ConfigError
from arjax.methods.base import METHODS, WHERE, Method
from arjax.registry import closest

# Fields of the old separate attack description, read into one ``attack`` spec.
ATTACK_ALIASES = ("norm", "eps", "num_steps", "alpha", "step_size", "attack_loss", "random_start")
# What those fields held by default before they became the spec (arjax <= ece2a3f).
_OLD_ATTACK_DEFAULTS = dict(
    attack="pgd", norm="linf", eps=0.1, num_steps=20, alpha=4.0, step_size=None,
    attack_loss="ce", random_start=True,
)  # fmt: skip


def _fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls) if f.init}


def _init_vars(cls: type) -> set[str]:
    """Names of the ``InitVar`` inputs of derived fields (e.g. IMA's ``num_epochs``)."""
    return {n for n, f in cls.__dataclass_fields__.items() if "InitVar" in str(f.type)}


def _default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def _has_attack(cls: type) -> bool:
    field = _fields(cls).get("attack")
    return field is not None and "AttackSpec" in str(field.type)


def _fold_attack_aliases(cls: type, values: dict, where: str) -> dict:
    """Old ``attack``/``norm``/``eps``/... fields as one ``attack`` spec string."""
    aliases = {k: values.pop(k) for k in ATTACK_ALIASES if k in values}
    attack = values.get("attack")
    bare = isinstance(attack, str) and ":" not in attack
    if not aliases and not bare:
        return values
    if attack is not None and not bare:
        raise ConfigError(
            f"{where}.attack={attack!r} is a full attack spec, so {where}."
            f"{sorted(aliases)[0]} cannot be set too; write it into the spec "
            f"({attack_syntax.FORMAT})"
        )
    old = {**_OLD_ATTACK_DEFAULTS, **aliases}
    if attack is None:  # TRADES had no attack field: always PGD on the KL
        default = _default(_fields(cls)["attack"])
        attack = attack_syntax.split_spec(str(default))[0]
    if str(_default(_fields(cls)["attack"])).endswith("loss=kl"):
        old["attack_loss"] = "kl"
    values["attack"] = attack_syntax.format_spec(
        attack, old["norm"], old["eps"], old["num_steps"],
        loss=None if old["attack_loss"] == "ce" else old["attack_loss"],
        alpha=None if float(old["alpha"]) == 4.0 else float(old["alpha"]),
        step_size=old["step_size"] or None,
        random_start=None if old["random_start"] else False,
    )  # fmt: skip
    return values


def _coerce(where: str, field: dataclasses.Field, value: Any, context: dict) -> Any:
    """A config value as the field's type (JSON lists -> tuples, ints -> floats, ...)."""
    kind = str(field.type)
    path = f"{where}.{field.name}"
    if "Method" in kind and hasattr(value, "keys"):
        return from_config(value, where=path, **context)
    if isinstance(value, list | tuple):
        return tuple(value)
    if kind.startswith("float") and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind == "bool" and not isinstance(value, bool):
        raise ConfigError(f"{path} must be True or False, got {value!r}")
    if kind == "str" and not isinstance(value, str):
        raise ConfigError(f"{path} must be a string, got {value!r}")
    return value


def section_values(section: Mapping[str, Any]) -> dict:
    """A config section (ConfigDict or mapping) as a plain dict of its fields."""
    if hasattr(section, "to_dict"):
        return section.to_dict()
    return dict(section.items())


def from_config(section: Mapping[str, Any], *, where: str = "method", **context: Any) -> Method:
    """The method a config section describes, checked and with its derived fields.

    Args:
      section: ``{"name": ..., <fields>}`` (the ``method`` section of a config, a
        ``config.json`` read back, or a plain dict). The attack fields of older configs
        (``attack="pgd"``, ``norm``, ``eps``, ``num_steps``, ``alpha``, ``step_size``,
        ``attack_loss``, ``random_start``) are read into the one ``attack`` spec.
      where: the config path named in errors.
      **context: facts of the run a method derives fields from (``num_epochs``: IMA's
        Δε = ε_max / epochs); each is passed only to methods that take it.

    Raises:
      ConfigError: an unknown method or field (the nearest named), a value out of range.
    """
    values = section_values(section)
    name = values.pop("name", None)
    cls = METHODS.lookup(name, field=f"{where}.name")
    if _has_attack(cls):
        values = _fold_attack_aliases(cls, values, where)
    fields = _fields(cls)
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            near = closest(key, list(fields))
            hint = f"did you mean {where}.{near}?" if near else f"valid: {', '.join(fields)}"
            raise ConfigError(f"unknown field {where}.{key} for method {name!r}; {hint}")
        kwargs[key] = _coerce(where, fields[key], value, context)
    for key, value in context.items():  # derived-field inputs (InitVar) the method takes
        if key in _init_vars(cls):
            kwargs[key] = value
    token = WHERE.set(where)
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field missing
        raise ConfigError(f"{where} for method {name!r}: {e}") from None
    finally:
        WHERE.reset(token)


def config_value(value: Any) -> Any:
    """A field value as a config holds it (specs as text, nested methods as sections)."""
    if isinstance(value, Method):
        return method_section(value)
    if dataclasses.is_dataclass(value) and hasattr(value, "text"):
        return value.text  # an AttackSpec
    return value


def method_section(method: Method) -> dict:
    """``{"name": ..., <field>: <config value>}``: the section :func:`from_config` reads."""
    out = {"name": method.name}
    for field in dataclasses.fields(method):
        if field.init:
            out[field.name] = config_value(getattr(method, field.name))
    return out


def default_section(name: str, **overrides: Any) -> dict:
    """A method's config fields: its defaults updated by ``overrides`` (no jax needed).

    Raises:
      ConfigError: unknown method or field (the nearest named). Values are checked when
        the run builds the method (:func:`from_config`).
    """
    cls = METHODS.lookup(name)
    values = {}
    for field in _fields(cls).values():
        default = _default(field)
        if default is not dataclasses.MISSING:
            values[field.name] = config_value(default)
    if _has_attack(cls):
        overrides = _fold_attack_aliases(cls, dict(overrides), "method")
    for key, value in overrides.items():
        if key not in values and key not in _fields(cls):
            near = closest(key, list(values))
            hint = f"did you mean method.{near}?" if near else f"valid: {', '.join(values)}"
            raise ConfigError(f"unknown field method.{key} for method {name!r}; {hint}")
        values[key] = config_value(value)
    return {"name": name, **values}
