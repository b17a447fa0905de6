"""CSV manifests of image files: table parsing, patient-grouped splits, the manifest reader.

The generic layer under the medical readers (``arjax.data.medical``) and the
synthetic lesion set (``arjax.data.lesions``): config-field checks whose
errors name the ``data.`` field; CSV and list files read with 1-based line
numbers so that every error says ``file:line: problem``; bounding boxes
checked against their image and rescaled; seeded patient-grouped splits and a
patient-leakage check; and ``read_manifest``, registered as
``data.name="csv_manifest"``: any PNG / JPEG / DICOM set listed as
``path,label[,patient_id][,fold]`` (e.g. CMMD or a private set).
"""

import csv
import logging
import os
from collections.abc import Sequence

import ml_collections
import numpy as np

from arjax.data.checks import check_num_classes, verify_images
from arjax.data.images import ImageFileSource, image_size_of
from arjax.data.labels import check_duplicate_paths, label_lookup, label_names
from arjax.data.registry import DatasetSplits, register_dataset

log = logging.getLogger(__name__)

_INT_LABEL = frozenset("0123456789")


def config_int(config: ml_collections.ConfigDict, field: str, default: int, minimum: int) -> int:
    """``data.<field>`` as an int ``>= minimum``; the error names the field."""
    value = config.get(field, default)
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"data.{field} must be an int >= {minimum}, got {value!r}")
    return int(value)


def config_float(
    config: ml_collections.ConfigDict, field: str, default: float, low: float, high: float
) -> float:
    """``data.<field>`` as a float in ``[low, high)``; the error names the field."""
    value = config.get(field, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value < high:
        raise ValueError(f"data.{field} must be a number in [{low}, {high}), got {value!r}")
    return float(value)


def config_optional_path(config: ml_collections.ConfigDict, field: str) -> str | None:
    """``data.<field>`` as a path (``~`` expanded) or ``None`` when unset or empty."""
    value = config.get(field, None)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError(f"data.{field} must be a path string or None, got {value!r}")
    return os.path.expanduser(value)


def config_root(config: ml_collections.ConfigDict, field: str) -> str:
    """``data.<field>`` as an existing folder."""
    value = config_optional_path(config, field)
    if value is None:
        raise ValueError(f"data.{field} must be the dataset's folder, got None")
    if not os.path.isdir(value):
        raise FileNotFoundError(f"data.{field}: folder not found: {value}")
    return value


def read_csv(
    path: str, required: Sequence[str]
) -> tuple[list[str], list[dict[str, str]], list[int]]:
    """Reads a CSV with a header row; blank rows are skipped.

    Args:
        path: The CSV file.
        required: Column names that must be in the header.

    Returns:
        ``(header, records, lines)``: stripped column names, one dict per
        data row, and each row's 1-based line number in the file.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: ``path:line`` for a missing column, a short row or bad CSV.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"file not found: {path}")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        try:
            header = [c.strip() for c in next(reader, [])]
            missing = [c for c in required if c not in header]
            if missing:
                raise ValueError(f"{path}:1: missing column(s) {missing}; header is {header}")
            need = 1 + max((header.index(c) for c in required), default=-1)
            records, lines = [], []
            for row in reader:
                if not any(cell.strip() for cell in row):
                    continue
                if len(row) < need:
                    raise ValueError(
                        f"{path}:{reader.line_num}: expected at least {need} columns "
                        f"({', '.join(header[:need])}), got {len(row)}"
                    )
                records.append(dict(zip(header, row, strict=False)))
                lines.append(reader.line_num)
        except csv.Error as e:
            raise ValueError(f"{path}:{reader.line_num}: bad CSV: {e}") from e
    return header, records, lines


def read_list(path: str) -> list[tuple[str, int]]:
    """Non-blank lines of a text file as ``(stripped text, 1-based line number)``."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"file not found: {path}")
    with open(path, encoding="utf-8") as f:
        return [(text.strip(), i) for i, text in enumerate(f, 1) if text.strip()]


def parse_box(
    values: Sequence[str], where: str, frame: tuple[int, int], size: int
) -> tuple[float, float, float, float]:
    """``(x, y, w, h)`` strings in a ``(width, height)`` frame -> floats in ``size x size`` pixels.

    A box may reach half a pixel past the border (rounding in published
    coordinates); it is clipped to the image. Anything further is an error.

    Raises:
        ValueError: ``where`` (``file:line``) and the box, if it is not four
            numbers, has ``w <= 0`` or ``h <= 0``, or lies outside the image.
    """
    try:
        x, y, w, h = (float(v) for v in values)
    except ValueError:
        raise ValueError(
            f"{where}: box coordinates must be 4 numbers, got {list(values)}"
        ) from None
    width, height = frame
    tol = 0.5
    inside = x >= -tol and y >= -tol and x + w <= width + tol and y + h <= height + tol
    if not (w > 0 and h > 0 and inside):
        raise ValueError(
            f"{where}: box (x={x}, y={y}, w={w}, h={h}) is outside the {width}x{height} image"
        )
    x0, y0 = max(x, 0.0), max(y, 0.0)
    x1, y1 = min(x + w, width), min(y + h, height)
    sx, sy = size / width, size / height
    return x0 * sx, y0 * sy, (x1 - x0) * sx, (y1 - y0) * sy


def patient_split(
    patients: np.ndarray, fractions: dict[str, float], seed: int
) -> dict[str, np.ndarray]:
    """Seeded patient-grouped split: no patient in two splits.

    Patients are shuffled (``default_rng(seed)`` over the sorted unique ids);
    each split in ``fractions`` takes the shortest run of the next patients
    holding at least ``fraction * N`` examples (at least one patient when the
    fraction is positive); ``"train"`` gets the remaining patients.

    Args:
        patients: Patient id of each example, ``[N]`` (strings).
        fractions: Split name -> fraction of examples in ``[0, 1)``.
        seed: Shuffle seed.

    Returns:
        Split name -> sorted positions ``[n_split]`` (int64), ``"train"`` included.

    Raises:
        ValueError: If no patient is left for ``"train"``.
    """
    unique, inverse = np.unique(np.asarray(patients), return_inverse=True)
    counts = np.bincount(inverse, minlength=len(unique))
    order = np.random.default_rng(seed).permutation(len(unique))
    owner = np.zeros(len(unique), np.int64)  # 0 = train, k = k-th split of ``fractions``
    start = 0
    for k, fraction in enumerate(fractions.values(), 1):
        if fraction <= 0:
            continue
        cumulative = np.cumsum(counts[order[start:]])
        take = min(
            int(np.searchsorted(cumulative, fraction * len(inverse) - 1e-9)) + 1, len(cumulative)
        )
        owner[order[start : start + take]] = k
        start += take
    if start >= len(unique):
        raise ValueError(f"split fractions {fractions} leave no patients for training")
    owner_of_row = owner[inverse]
    out = {"train": np.flatnonzero(owner_of_row == 0)}
    for k, split in enumerate(fractions, 1):
        out[split] = np.flatnonzero(owner_of_row == k)
    return out


def check_patient_leakage(patients_by_split: dict[str, np.ndarray], where: str) -> None:
    """Raises ``ValueError`` naming a patient id found in two splits (and the two splits)."""
    seen: dict[str, set] = {}
    for split, ids in patients_by_split.items():
        current = set(np.asarray(ids).tolist())
        for other, earlier in seen.items():
            shared = sorted(current & earlier)
            if shared:
                raise ValueError(
                    f"{where}: patient leakage: patient {shared[0]!r} is in both the "
                    f"'{other}' and '{split}' splits ({len(shared)} shared patient(s))"
                )
        seen[split] = current


def make_sources(
    paths: list[str],
    labels: np.ndarray,
    boxes: dict[int, list],
    rows_by_split: dict[str, np.ndarray],
    patients: np.ndarray | None = None,
    **source_kwargs,
) -> dict[str, ImageFileSource]:
    """One source per split from row indices into ``paths``, ``labels``, ``boxes``, ``patients``."""
    out = {}
    for split, rows in rows_by_split.items():
        split_boxes = {i: boxes[r] for i, r in enumerate(rows) if r in boxes}
        out[split] = ImageFileSource(
            [paths[r] for r in rows],
            labels[rows],
            boxes=split_boxes,
            patients=None if patients is None else patients[rows],
            **source_kwargs,
        )
    return out


def cap_rows(rows_by_split: dict[str, np.ndarray], max_examples: int) -> dict[str, np.ndarray]:
    """The first ``max_examples`` rows of each split (0: all); logs what is left out."""
    if not max_examples:
        return rows_by_split
    for split, rows in rows_by_split.items():
        if len(rows) > max_examples:
            log.info("data.max_examples: %s keeps %d of %d", split, max_examples, len(rows))
    return {split: rows[:max_examples] for split, rows in rows_by_split.items()}


def _fold_rows(config, header, records, lines, manifest, patients):
    """Split -> rows: ``fold == data.test_fold / data.val_fold``, the rest by patient fractions."""
    folds = {"test": config.get("test_fold", None), "val": config.get("val_fold", None)}
    for split, fold in folds.items():
        if fold is not None and (isinstance(fold, bool) or not isinstance(fold, int)):
            raise ValueError(f"data.{split}_fold must be an int or None, got {fold!r}")
    fractions = {
        "test": config_float(config, "test_fraction", 0.2, 0.0, 1.0),
        "val": config_float(config, "val_fraction", 0.1, 0.0, 1.0),
    }
    rows: dict[str, np.ndarray] = {}
    assigned = np.zeros(len(records), bool)
    if any(f is not None for f in folds.values()):
        if "fold" not in header:
            raise ValueError(f"{manifest}:1: data.test_fold / data.val_fold need a 'fold' column")
        values = []
        for record, line in zip(records, lines, strict=True):
            try:
                values.append(int(record["fold"]))
            except ValueError:
                raise ValueError(f"{manifest}:{line}: fold must be an int") from None
        values = np.asarray(values)
        if folds["test"] is not None and folds["test"] == folds["val"]:
            raise ValueError(f"data.test_fold and data.val_fold are both {folds['test']}")
        for split, fold in folds.items():
            if fold is None:
                continue
            if fold not in set(values.tolist()):
                raise ValueError(
                    f"data.{split}_fold={fold!r} matches no row of {manifest}; "
                    f"folds: {sorted(set(values.tolist()))}"
                )
            rows[split] = np.flatnonzero(values == fold)
            assigned |= values == fold
    rest = np.flatnonzero(~assigned)
    todo = {split: fractions[split] for split in ("test", "val") if split not in rows}
    seed = config_int(config, "seed", 0, 0)
    for split, positions in patient_split(patients[rest], todo, seed).items():
        rows[split] = rest[positions]
    return {split: rows[split] for split in ("train", "val", "test") if len(rows[split])}


def read_manifest(config: ml_collections.ConfigDict, name: str) -> DatasetSplits:
    """Reads an image set listed in a CSV manifest.

    Manifest columns: ``path`` (relative paths resolve against the
    manifest's folder; PNG, JPEG or DICOM, by suffix or ``DICM`` marker),
    ``label`` and, optionally,
    ``patient_id`` and ``fold`` (int). Config fields (``data.``): ``manifest``;
    ``image_size`` [224]; ``channels`` [1]; ``label_names`` [None: sorted
    unique labels, or ``0..max`` when all labels are integers, after checks
    against typos (a missing-value cell such as ``NaN``, integer and named
    labels mixed, integer classes without rows, a rare label one or two edits
    from a common one); integer labels always pass through]; ``num_classes``
    [None: no check; else the number of classes the labels must give, and
    with integer labels the classes ``0..num_classes-1``]; ``multi_label``
    [False: one label per row, int32 labels; True: ``|``-separated labels,
    empty = none, float32 multi-hot];
    ``test_fold`` / ``val_fold`` [None: rows with that fold form the split];
    ``test_fraction`` [0.2] / ``val_fraction`` [0.1] with ``seed`` [0] for a
    split without a fold (patient-grouped, ``patient_split``); ``boxes``
    [None: CSV ``path,class,x,y,w,h`` in the original image's pixels,
    ``path`` spelled as in the manifest; rescaled to ``image_size``];
    ``max_examples`` [0: all; else the first N rows of each split, in
    manifest order]; ``cache_dir`` [None] and ``decode_threads`` [0] as in
    ``ImageFileSource``; ``verify_images`` [True: ``checks.verify_images``
    reads the header of every file of the splits before returning]. A file
    listed twice is an error (``check_duplicate_paths``), never two
    examples that could fall in two splits.

    Args:
        config: The ``data`` section.
        name: ``DatasetSplits.name`` of the result.

    Returns:
        ``DatasetSplits`` with non-empty ``train`` (and ``val`` / ``test``
        where non-empty) ``ImageFileSource`` splits, ``input_shape=(S, S, C)``,
        ``num_classes=len(label_names)``, ``bounds=(0, 1)``.

    Raises:
        FileNotFoundError: Missing manifest, box list or image (``file:line``).
        ValueError: ``file:line`` for an unknown label, a bad fold or box, a
            box outside its image; patient leakage between splits (patient
            id and the two splits). ``ConfigError`` (a ``ValueError``) for a
            label that looks mistyped, a class count other than
            ``data.num_classes``, a file listed twice (both lines) and an
            image that fails ``verify_images`` (line, file, reason: not an
            image, truncated, DICOM without pydicom or without a decoder for
            its transfer syntax).
    """
    manifest = config_optional_path(config, "manifest")
    if manifest is None:
        raise ValueError("data.manifest must be the path of a CSV with columns path,label")
    size = config_int(config, "image_size", 224, 1)
    channels = config_int(config, "channels", 1, 1)
    if channels not in (1, 3):
        raise ValueError(f"data.channels must be 1 or 3, got {channels}")
    multi = config.get("multi_label", False)
    if not isinstance(multi, bool):
        raise ValueError(f"data.multi_label must be a bool, got {multi!r}")
    header, records, lines = read_csv(manifest, ("path", "label"))
    if not records:
        raise ValueError(f"{manifest}: no rows")
    parts = []
    for record, line in zip(records, lines, strict=True):
        raw = record["label"].strip()
        if not multi and not raw:
            raise ValueError(f"{manifest}:{line}: empty label")
        parts.append([p.strip() for p in raw.split("|") if p.strip()] if multi else [raw])
    where = [f"{manifest}:{line}" for line in lines]
    names = label_names(config, parts, multi, where)
    check_num_classes(len(names), config.get("num_classes", None), manifest, classes=names)
    lookup = label_lookup(names)
    labels = np.zeros((len(records), len(names)) if multi else len(records), np.float32)
    for i, (row_parts, line) in enumerate(zip(parts, lines, strict=True)):
        for part in row_parts:
            k = lookup(part, f"{manifest}:{line}")
            if multi:
                labels[i, k] = 1.0
            else:
                labels[i] = k
    base = os.path.dirname(os.path.abspath(manifest))
    paths = [os.path.join(base, r["path"].strip()) for r in records]  # absolute paths stay
    check_duplicate_paths(paths, where, [r["label"].strip() for r in records])
    if "patient_id" in header:
        patients = np.asarray([r["patient_id"].strip() or f"row{i}" for i, r in enumerate(records)])
    else:
        patients = np.asarray([f"row{i}" for i in range(len(records))])
    rows = _fold_rows(config, header, records, lines, manifest, patients)
    check_patient_leakage({s: patients[r] for s, r in rows.items()}, manifest)
    rows = cap_rows(rows, config_int(config, "max_examples", 0, 0))
    used = np.sort(np.concatenate(list(rows.values())))
    for row in used:
        if not os.path.isfile(paths[row]):
            raise FileNotFoundError(f"{manifest}:{lines[row]}: image file not found: {paths[row]}")
    if config.get("verify_images", True):
        verify_images(
            [paths[r] for r in used],
            [where[r] for r in used],
            channels=channels,
            image_size=size,
            source=manifest,
        )
    boxes = _manifest_boxes(config, manifest, records, paths, set(used.tolist()), lookup, size)
    splits = make_sources(
        paths,
        labels if multi else labels.astype(np.int32),
        boxes,
        rows,
        patients if "patient_id" in header else None,
        image_size=size,
        channels=channels,
        cache_dir=config_optional_path(config, "cache_dir"),
        class_names=names,
        decode_threads=config_int(config, "decode_threads", 0, 0),
    )
    log.info("%s: %s", name, {s: (len(v), len(v.boxes)) for s, v in splits.items()})
    return DatasetSplits(splits, (size, size, channels), len(names), (0.0, 1.0), name)


def _manifest_boxes(config, manifest, records, paths, used, lookup, size) -> dict[int, list]:
    """Row -> [(class, x, y, w, h)] in ``size`` pixels from the ``data.boxes`` CSV."""
    box_csv = config_optional_path(config, "boxes")
    if box_csv is None:
        return {}
    if not os.path.exists(box_csv) and not os.path.isabs(box_csv):
        box_csv = os.path.join(os.path.dirname(manifest), box_csv)
    header, box_records, box_lines = read_csv(box_csv, ("path", "x", "y", "w", "h"))
    class_column = "class" if "class" in header else "label"
    if class_column not in header:
        raise ValueError(f"{box_csv}:1: missing column 'class'; header is {header}")
    row_of: dict[str, int] = {}
    for i, record in enumerate(records):
        row_of.setdefault(record["path"].strip(), i)
    frames: dict[int, tuple[int, int]] = {}
    boxes: dict[int, list] = {}
    for record, line in zip(box_records, box_lines, strict=True):
        where = f"{box_csv}:{line}"
        row = row_of.get(record["path"].strip())
        if row is None:
            raise ValueError(f"{where}: {record['path'].strip()!r} is not in {manifest}")
        k = lookup(record[class_column].strip(), where)
        if row not in used:
            continue
        if row not in frames:
            frames[row] = image_size_of(paths[row])
        box = parse_box([record[c] for c in "xywh"], where, frames[row], size)
        boxes.setdefault(row, []).append((k, *box))
    return boxes


@register_dataset("csv_manifest")
def build_csv_manifest(config: ml_collections.ConfigDict) -> DatasetSplits:
    """Any image set listed in a CSV manifest (e.g. CMMD, private sets); see ``read_manifest``.

    Args:
        config: The ``data`` section: ``manifest`` (CSV path) and the keyword
            arguments of ``read_manifest`` as fields.

    Returns:
        ``read_manifest``'s ``DatasetSplits`` named ``"csv_manifest"``.
    """
    return read_manifest(config, name="csv_manifest")
