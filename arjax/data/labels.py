"""Labels and rows of a CSV manifest, checked before any compute.

Without ``data.label_names`` the classes are the labels a manifest uses, so a typo
(``dsik`` next to ``disk``), a missing-value cell (``NaN``) or a gap in integer labels
would silently add a class and shift the others; these checks refuse them with the
manifest line. A file listed twice could land in two splits: also refused.
"""

import os
from collections.abc import Sequence

import ml_collections

from arjax.config_lib import ConfigError

_INT_LABEL = frozenset("0123456789")


def label_lookup(names: tuple[str, ...]):
    """``lookup(value, where) -> class index`` for a manifest's label cells.

    Integer labels below ``len(names)`` pass through; anything else not in ``names``
    raises ``ConfigError`` naming ``where`` (``file:line``) and the valid labels.
    """
    index = {name: i for i, name in enumerate(names)}

    def lookup(value: str, where: str) -> int:
        if value in index:
            return index[value]
        if value and set(value) <= _INT_LABEL and int(value) < len(names):
            return int(value)  # integer labels pass through
        raise ConfigError(f"{where}: unknown label {value!r}; valid labels: {', '.join(names)}")

    return lookup


# Cell values that mean "no label" (pandas / spreadsheet exports), compared lower-cased.
_MISSING_LABELS = frozenset({"nan", "none", "null", "na", "n/a", "#n/a", "?", "-", "missing"})


def _edit_distance(a: str, b: str) -> int:
    """Optimal string alignment distance: insertions, deletions, substitutions, swaps."""
    prev2, prev = None, list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        cur = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        prev2, prev = prev, cur
    return prev[-1]


def _folded(name: str) -> str:
    """``name`` lower-cased without spaces, ``_`` and ``-``."""
    return "".join(name.lower().replace("_", " ").replace("-", " ").split())


def _looks_like_typo(rare: str, common: str) -> bool:
    """``rare`` is one or two edits from ``common`` (names of >= 4 characters, not only digits)."""
    if len(common) < 4 or "".join(c for c in rare if not c.isdigit()) == "".join(
        c for c in common if not c.isdigit()
    ):
        return False  # short names, or names differing in digits only (class1 / class2)
    return _edit_distance(rare.lower(), common.lower()) <= (1 if len(common) < 8 else 2)


def _check_inferred_labels(parts: list[list[str]], where: list[str]) -> None:
    """Rejects labels that would silently add a class when ``data.label_names`` is unset.

    A missing-value cell (``NaN``, ``None``, ...), a mix of integer and named
    labels, integer labels that skip classes (``0, 1, 7``: classes 2-6 would
    be empty), two labels that differ only in case or spacing (``Disk``,
    ``disk``), and a rare label one or two edits away from one with at least
    five times its rows (``dsik`` for ``disk``).

    Raises:
        ConfigError: ``file:line: label ...`` naming the labels found.
    """
    first: dict[str, str] = {}  # label -> where it first occurs (labels in row order)
    counts: dict[str, int] = {}
    for row, at in zip(parts, where, strict=True):
        for p in row:
            first.setdefault(p, at)
            counts[p] = counts.get(p, 0) + 1
    found = ", ".join(sorted(counts))
    fix = f"fix it, or set data.label_names to the valid classes (labels found: {found})"
    for label, at in first.items():
        if label.lower() in _MISSING_LABELS:
            raise ConfigError(f"{at}: label {label!r} is a missing value; {fix}")
    numeric = {p for p in counts if set(p) <= _INT_LABEL}
    if numeric and len(numeric) < len(counts):
        named = set(counts) - numeric
        minority = numeric if len(numeric) < len(named) else named
        odd = next(p for p in first if p in minority)  # the minority kind's first label
        raise ConfigError(f"{first[odd]}: label {odd!r} mixes integer and named labels; {fix}")
    if numeric:
        top = max(int(p) for p in numeric)
        empty = sorted(set(range(top)) - {int(p) for p in numeric})
        if empty:
            largest = max(numeric, key=int)
            raise ConfigError(
                f"{first[largest]}: label {largest!r} makes {top + 1} classes 0..{top}, but "
                f"classes {', '.join(map(str, empty))} have no row; {fix} (or data.num_classes)"
            )
        return
    order = {label: k for k, label in enumerate(first)}  # ties: the later label is the odd one
    by_rows = sorted(counts, key=lambda p: (counts[p], -order[p]))
    for rare in by_rows:
        for common in reversed(by_rows):
            if common == rare:
                continue
            if _folded(rare) == _folded(common):
                how = "differs only in case or spacing from"
            elif counts[common] >= 5 * counts[rare] and _looks_like_typo(rare, common):
                how = "looks like a typo of"
            else:
                continue
            raise ConfigError(
                f"{first[rare]}: label {rare!r} ({counts[rare]} row(s)) {how} {common!r} "
                f"({counts[common]} rows); {fix}"
            )


def label_names(
    config: ml_collections.ConfigDict, parts: list[list[str]], multi: bool, where: list[str]
) -> tuple[str, ...]:
    """The class names: ``data.label_names``, else the labels seen (checked for typos).

    Args:
      config: the ``data`` section (``label_names``, ``num_classes``).
      parts: each row's label cells (one, or several for multi-label rows).
      multi: multi-label data.
      where: ``file:line`` of each row, for the messages.

    Raises:
      ConfigError: a missing-value cell, mixed or gapped integers, a likely typo.
      ValueError: ``data.label_names`` not distinct or too few.
    """
    names = config.get("label_names", None)
    expected = config.get("num_classes", None)
    seen = {p for row in parts for p in row}
    integers = bool(seen) and all(p and set(p) <= _INT_LABEL for p in seen)
    if names is None and integers and isinstance(expected, int) and expected >= 1:
        names = tuple(str(i) for i in range(expected))  # the lookup rejects labels >= expected
    elif names is None:
        _check_inferred_labels(parts, where)
        if integers:
            names = tuple(str(i) for i in range(max(max(int(p) for p in seen) + 1, 2)))
        else:
            names = tuple(sorted(seen))
    names = tuple(str(n) for n in names)
    if len(names) < (1 if multi else 2) or len(set(names)) != len(names):
        kind = "a multi-label set needs >= 1" if multi else "a single-label set needs >= 2"
        raise ValueError(f"data.label_names must be distinct names ({kind}), got {names}")
    return names


def check_duplicate_paths(
    paths: Sequence[str], where: Sequence[str], labels: Sequence[str]
) -> None:
    """Rejects a manifest that lists one image file twice.

    A repeated file would be read twice per epoch, or, split two ways, leak
    from training into evaluation; with two labels it is also ambiguous.
    Paths are compared after ``os.path.normpath`` / ``normcase`` (``a/./b.png``
    is ``a/b.png``; symbolic links are not resolved).

    Args:
        paths: Absolute image paths, one per manifest row.
        where: ``file:line`` of each row.
        labels: The raw label cell of each row (for the message).

    Raises:
        ConfigError: ``file:line: path is listed twice (also at file:line ...)``.
    """
    seen: dict[str, int] = {}
    for i, path in enumerate(paths):
        key = os.path.normcase(os.path.normpath(path))
        if key in seen:
            j = seen[key]
            same = "same label" if labels[i] == labels[j] else (
                f"labels {labels[j]!r} and {labels[i]!r}"
            )  # fmt: skip
            raise ConfigError(
                f"{where[i]}: {path} is listed twice (also at {where[j]}, {same}); "
                "list each image file once"
            )
        seen[key] = i
