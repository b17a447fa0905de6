"""The corruption registry, the per-dataset severity tables and :func:`corrupt`.

A corruption is a function ``fn(images [B, H, W, C] in [0, 1], parameter, key) ->
images`` registered with the parameter of each of its five severities, per MedMNIST-C
dataset (Di Salvo et al. 2024, ``medmnistc/corruptions/registry.py`` ``CORRUPTIONS_DS``:
the same corruption has different strengths on chest X-rays and on abdominal CT). A
preset names one of those datasets; :func:`corrupt` looks the parameter up and applies
the corruption. Severity 0 is the identity, severities 1-5 are MedMNIST-C's levels
(their ``severity_params[severity - 1]``, ``dataset_manager.py`` loops ``range(0, 5)``).
"""

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

from arjax.config_lib import ConfigError
from arjax.registry import Registry, unknown_name_message
from arjax.types import Array, PRNGKey

SEVERITIES = 5
# MedMNIST-C's grey-scale datasets (``DATASET_RGB`` False) that arjax ships tables for:
# the radiology sets (chest X-ray, paediatric chest X-ray, abdominal CT in three planes,
# breast ultrasound) and retinal OCT (the grey-scale set with defocus blur).
PRESETS = ("chestmnist", "pneumoniamnist", "organamnist", "breastmnist", "octmnist")
# MedMNIST-C gives OrganC/OrganS-MNIST the OrganA-MNIST table, value for value.
PRESET_ALIASES = {"organcmnist": "organamnist", "organsmnist": "organamnist"}
DEFAULT_PRESET = "chestmnist"
# A severity table under this key applies to every preset (corruptions MedMNIST-C lacks).
ANY_PRESET = "*"

Corruption = Callable[[Array, Any, PRNGKey | None], Array]


@dataclasses.dataclass(frozen=True)
class CorruptionDef:
    """A registered corruption.

    Attributes:
      fn: ``fn(images, parameter, key)``: float32 ``[B, H, W, C]`` in ``[0, 1]`` to the
        corrupted images (same shape, in ``[0, 1]``); ``parameter`` is one entry of a
        severity table (hashable: a float or a tuple), ``key`` a PRNG key or None.
      severities: preset -> the five parameters of severities 1..5 (key
        :data:`ANY_PRESET` for every preset).
      random: the corruption draws random numbers (it needs a key).
      source: the definition it follows, for reports and docs.
    """

    fn: Corruption
    severities: Mapping[str, tuple]
    random: bool
    source: str

    def __post_init__(self):
        for preset, params in self.severities.items():
            if len(params) != SEVERITIES:
                raise ValueError(f"{preset}: {len(params)} severities, need {SEVERITIES}")


# Corruption name -> definition; each corruption module registers its own.
CORRUPTIONS: Registry[CorruptionDef] = Registry("corruption", "corruption")


def register_corruption(name: str, definition: CorruptionDef) -> None:
    """Adds ``name`` to :data:`CORRUPTIONS` (a ValueError if it is taken)."""
    CORRUPTIONS.register(name, definition)


def register_table(
    name: str, fn: Corruption, severities: Mapping[str, tuple], *, random: bool, source: str
) -> None:
    """``register_corruption(name, CorruptionDef(fn, severities, random, source))``."""
    register_corruption(name, CorruptionDef(fn, severities, random=random, source=source))


def _unknown(kind: str, value: Any, valid: list[str]) -> ConfigError:
    return ConfigError(unknown_name_message(kind, "", value, valid))


def resolve_preset(preset: str) -> str:
    """The table a preset name reads (aliases resolved); ConfigError for unknown names."""
    preset = PRESET_ALIASES.get(preset, preset)
    if preset not in PRESETS:
        raise _unknown("corruption preset", preset, [*PRESETS, *PRESET_ALIASES])
    return preset


def corruption_names(preset: str = DEFAULT_PRESET) -> tuple[str, ...]:
    """The corruptions a preset defines, in registration order (``"all"`` of an evaluator)."""
    preset = resolve_preset(preset)
    return tuple(n for n, d in CORRUPTIONS.items() if {preset, ANY_PRESET} & set(d.severities))


def severity_parameter(name: str, severity: int, preset: str = DEFAULT_PRESET) -> Any:
    """The parameter of corruption ``name`` at ``severity`` (1..5) under ``preset``.

    Raises:
      ConfigError: unknown name, a preset without this corruption, or a severity
        outside 1..5, each with the valid choices.
    """
    CORRUPTIONS.lookup(name)
    table = resolve_preset(preset)
    tables = CORRUPTIONS[name].severities
    params = tables.get(table, tables.get(ANY_PRESET))
    if params is None:
        has = sorted(p for p in tables if p != ANY_PRESET)
        raise ConfigError(
            f"corruption {name!r} is not part of the {preset!r} set; presets with it: "
            f"{', '.join(has)}; {preset!r} has: {', '.join(corruption_names(preset))}"
        )
    if isinstance(severity, bool) or int(severity) != severity or not 1 <= severity <= SEVERITIES:
        raise ConfigError(f"corruption severity {severity!r} is out of range; valid: 0..5")
    return params[int(severity) - 1]


def corrupt(
    name: str,
    images: Array,
    severity: int,
    key: PRNGKey | None = None,
    *,
    preset: str = DEFAULT_PRESET,
) -> Array:
    """Applies corruption ``name`` at ``severity`` to a batch of images.

    Args:
      name: a registered corruption (``CORRUPTIONS``; ``corruption_names(preset)``).
      images: float ``[B, H, W, C]`` in ``[0, 1]`` (numpy or jax).
      severity: 0 (the identity: ``images`` is returned as given) or 1..5.
      key: PRNG key; required by the random corruptions (noise, motion blur's angle,
        bias field). The same key gives the same output; each image of the batch draws
        its own values.
      preset: the MedMNIST-C dataset whose severity table is used (:data:`PRESETS`).

    Returns:
      a jax array ``[B, H, W, C]`` in ``[0, 1]`` of the dtype of ``images`` (computed in
      float32).

    Raises:
      ConfigError: unknown name / preset, or severity outside 0..5 (with the choices).
      ValueError: images not ``[B, H, W, C]``, or a random corruption without a key.
    """
    if severity == 0 and not isinstance(severity, bool):
        severity_parameter(name, 1, preset)  # the name and preset are still checked
        return images
    param = severity_parameter(name, severity, preset)
    if np.ndim(images) != 4:
        raise ValueError(f"corrupt({name!r}) needs images [B, H, W, C], got {np.shape(images)}")
    definition = CORRUPTIONS[name]
    if definition.random and key is None:
        raise ValueError(f"corruption {name!r} is random: pass a PRNG key")
    dtype = images.dtype
    return jnp.asarray(definition.fn(jnp.asarray(images, jnp.float32), param, key), dtype)
