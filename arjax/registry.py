"""One registry idiom for everything a config names.

Attacks, methods, models, datasets, optimisers, learning-rate schedules and evaluators
are each a :class:`Registry`. An implementation registers itself next to where it is
defined, by decorator or by one call at the bottom of its module::

    MODELS = Registry("model", "model.name")

    @MODELS.register("mlp")
    def build_mlp(*, input_shape, num_classes, rngs, hidden=(10, 10)): ...

    ATTACKS.register("pgd", AttackDef(...))

and a lookup of an unknown name raises :class:`~arjax.config_lib.ConfigError` naming the
config field, the valid choices and the nearest name (``did you mean 'trades'?``). The
registry is a read-only mapping (``name in REG``, ``REG[name]``, iteration in
registration order), so code that only reads it needs nothing else.

Nothing here imports jax: config files and ``--help`` load without it.
"""

import difflib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Generic, TypeVar

from arjax.config_lib import ConfigError

T = TypeVar("T")


def closest(name: object, valid: Sequence[str]) -> str | None:
    """The valid name closest to a mistyped ``name`` (difflib), or None when none is close."""
    close = difflib.get_close_matches(str(name), [str(v) for v in valid], n=1)
    return close[0] if close else None


def unknown_name_message(kind: str, field: str, name: object, valid: Sequence[str]) -> str:
    """``unknown <field> 'x'; valid choices: a, b; did you mean 'a'?`` (one line).

    Args:
      kind: what is named (``"attack"``, ``"method"``), used when ``field`` is empty.
      field: the config field or flag the name came from (``"method.name"``).
      name: the unknown name.
      valid: the registered names.
    """
    near = closest(name, valid)
    hint = f"; did you mean {near!r}?" if near is not None else ""
    return f"unknown {field or kind} {name!r}; valid choices: {', '.join(valid)}{hint}"


class Registry(Mapping[str, T], Generic[T]):
    """Names to implementations, filled by the implementations' own modules.

    Args:
      kind: what the entries are, in messages (``"attack"``).
      field: the config field that names one (``"method.name"``), in messages.
    """

    def __init__(self, kind: str, field: str = ""):
        self.kind, self.field = kind, field
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T | None = None) -> Callable[[T], T] | T:
        """Registers ``entry`` as ``name``; without ``entry``, a decorator that does.

        Raises:
          ValueError: ``name`` is taken (two implementations under one name is a bug).
        """

        def add(value: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = value
            return value

        return add if entry is None else add(entry)

    def register_class(self, name: str, attribute: str = "name") -> Callable[[type], type]:
        """Class decorator: sets ``cls.<attribute> = name`` and registers the class."""

        def add(cls: type) -> type:
            setattr(cls, attribute, name)
            return self.register(name, cls)

        return add

    def lookup(self, name: object, field: str | None = None) -> T:
        """The entry registered as ``name``.

        Args:
          name: the name, usually a config value.
          field: the config field or flag to name in the error (default: the registry's).

        Raises:
          ConfigError: ``name`` is not registered (valid choices and the nearest named).
        """
        if isinstance(name, str) and name in self._entries:
            return self._entries[name]
        field = self.field if field is None else field
        raise ConfigError(unknown_name_message(self.kind, field, name, sorted(self._entries)))

    def __getitem__(self, name: str) -> T:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._entries)})"
