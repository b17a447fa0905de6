"""The text form of an attack: ``"name:norm:eps[:steps][:key=value]..."``.

One grammar for every place that names an attack: a training method's ``method.attack``,
the evaluation's ``eval.attacks``, ``arjax-evaluate --attack`` and the benchmarks. Examples::

    pgd:linf:8/255:10             PGD-10 in the L-inf ball of radius 8/255
    fgsm:linf:0.05                FGSM (its step count is fixed)
    pgd:l2:0.5:20:alpha=2.5       Madry's step rule alpha * eps / steps with alpha = 2.5
    pgd:linf:0.3:10:loss=kl       TRADES' inner maximisation

The optional ``key=value`` parts set the other fields of
:class:`arjax.attacks.AttackSpec` (``loss``, ``alpha``, ``step_size``, ``restarts``,
``random_start``). This module only splits and joins the text; the attack registry
(:func:`arjax.attacks.parse_attack`) checks names and ranges. It imports nothing
numerical, so config files can write specs without loading jax.
"""

from typing import Any

FORMAT = "attack:norm:eps[:steps][:key=value...], e.g. pgd:linf:0.01:20 or fgsm:linf:8/255"


class SyntaxFormatError(ValueError):
    """A spec string that does not follow :data:`FORMAT`."""


def _value(text: str) -> Any:
    """``"true"``/``"false"``/``"none"`` and numbers from their text; other text unchanged."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low == "none":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def split_spec(text: str) -> tuple[str, str, str, str | None, dict[str, Any]]:
    """``(attack, norm, eps text, steps text or None, options)`` of a spec string.

    Raises:
      SyntaxFormatError: not of the form :data:`FORMAT`.
    """
    if not isinstance(text, str):
        raise SyntaxFormatError(f"{text!r} is not a string of the form {FORMAT}")
    parts = text.strip().split(":")
    head = [p for p in parts if "=" not in p]
    tail = [p for p in parts if "=" in p]
    if len(head) not in (3, 4) or parts[: len(head)] != head:
        raise SyntaxFormatError(f"{text!r} is not of the form {FORMAT}")
    options = {}
    for part in tail:
        key, _, value = part.partition("=")
        options[key.strip()] = _value(value.strip())
    steps = head[3] if len(head) == 4 else None
    return head[0], head[1], head[2], steps, options


def _text(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value).lower()
    if isinstance(value, float):
        return repr(value)
    return str(value)


def format_spec(attack: str, norm: str, eps: Any, steps: int | None = None, **options: Any) -> str:
    """The spec string of an attack; options equal to None are left out.

    ``eps`` keeps its text when given as a string (``"8/255"``); a float is written with
    ``repr`` so that the string reads back to the same number.
    """
    parts = [attack, norm, eps if isinstance(eps, str) else _text(float(eps))]
    if steps is not None:
        parts.append(str(int(steps)))
    parts += [f"{k}={_text(v)}" for k, v in options.items() if v is not None]
    return ":".join(parts)


def with_steps(text: str, steps: int) -> str:
    """``text`` with its step count set to ``steps`` (added when it has none)."""
    attack, norm, eps, _, options = split_spec(text)
    return format_spec(attack, norm, eps, steps, **options)
