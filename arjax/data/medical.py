"""Medical image folders read from local files: ChestX-ray14, COVID-19 CT, CSV manifests.

Nothing is downloaded. Each builder checks the whole layout before returning
(CSV syntax, labels, boxes, split membership, patient leakage, that every
image file of the used splits exists and its header says it will decode:
``arjax.data.checks.verify_images``, off with ``verify_images=False``) and
returns ``DatasetSplits`` whose
splits are ``ImageFileSource`` objects: images are decoded lazily in
``gather`` (in grain worker processes when the pipeline uses them), float32
``[B, S, S, C]`` in [0, 1]. Errors name the file and, for CSV and list files,
the line (``file:line: problem``).

Registered ``data.name`` values and their fields (defaults in brackets):

* ``"chestxray14"`` (Khakzar et al., seed 002, Sec. 3.1): ``root`` with
  ``Data_Entry_2017.csv``, ``BBox_List_2017.csv``, ``train_val_list.txt``,
  ``test_list.txt`` and the PNGs in ``images/`` or ``images_*/images/``;
  ``image_size`` [224], ``val_fraction`` [0.1], ``seed`` [0], ``cache_dir``
  [None], ``max_examples`` [0 = all, else first N per split],
  ``original_size`` [1024: the frame of the published boxes],
  ``decode_threads`` [0]. Splits ``train``/``val``/``test``: the official
  test list, and the official train_val list split by patient.
* ``"covid_ct"`` (Ma et al., seed 004, Sec. 4.5; SARS-CoV-2 CT-scan layout):
  ``root`` with ``COVID/`` (label 1) and ``non-COVID/`` (label 0) image
  folders; ``image_size`` [224], ``channels`` [1], ``seed`` [0],
  ``test_per_class`` [200], ``val_per_class`` [30], ``cache_dir``,
  ``max_examples``, ``decode_threads``. Per class a seeded random choice of
  the test and validation images; the rest train (1022 + 1000 in the paper).
* ``"csv_manifest"``: ``arjax.data.manifest.read_manifest`` (re-exported here).
"""

import logging
import os

import ml_collections
import numpy as np

from arjax.data.checks import verify_images
from arjax.data.manifest import (
    build_csv_manifest,
    cap_rows,
    check_patient_leakage,
    config_float,
    config_int,
    config_optional_path,
    config_root,
    make_sources,
    parse_box,
    patient_split,
    read_csv,
    read_list,
)
from arjax.data.registry import DatasetSplits, register_dataset

log = logging.getLogger(__name__)

# The 14 NIH findings in the order of Wang et al. / Khakzar et al. (Table 1).
CHESTXRAY14_CLASSES = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
_BOX_ALIASES = {"Infiltrate": "Infiltration"}
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _find_images(root: str) -> dict[str, str]:
    """File name -> path for ``root/images/*`` and ``root/images_*/images/*`` (Kaggle)."""
    folders = [os.path.join(root, "images")]
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if entry.is_dir() and entry.name.startswith("images_"):
            folders += [entry.path, os.path.join(entry.path, "images")]
    found = {}
    for folder in folders:
        if os.path.isdir(folder):
            for entry in os.scandir(folder):
                found.setdefault(entry.name, entry.path)
    return found


def _chestxray_labels(findings: str, where: str) -> np.ndarray:
    multi_hot = np.zeros(len(CHESTXRAY14_CLASSES), np.float32)
    for finding in (f.strip() for f in findings.split("|")):
        if finding == "No Finding":
            continue
        if finding not in CHESTXRAY14_CLASSES:
            raise ValueError(
                f"{where}: unknown label {finding!r}; valid labels: "
                f"{', '.join(CHESTXRAY14_CLASSES)}, No Finding"
            )
        multi_hot[CHESTXRAY14_CLASSES.index(finding)] = 1.0
    return multi_hot


def _chestxray_lists(root: str, row_of: dict[str, int], entry_csv: str, lines: list[int]):
    """Rows of the official train_val and test lists; each image in exactly one."""
    member: dict[str, str] = {}
    rows = {}
    for split, file_name in (("train_val", "train_val_list.txt"), ("test", "test_list.txt")):
        list_path = os.path.join(root, file_name)
        rows[split] = []
        for name, line in read_list(list_path):
            if name not in row_of:
                raise ValueError(f"{list_path}:{line}: {name} is not in {entry_csv}")
            if name in member:
                raise ValueError(f"{list_path}:{line}: {name} is also in {member[name]}")
            member[name] = f"{list_path}:{line}"
            rows[split].append(row_of[name])
    for name, row in row_of.items():
        if name not in member:
            raise ValueError(
                f"{entry_csv}:{lines[row]}: {name} is in neither train_val_list.txt "
                "nor test_list.txt"
            )
    return np.asarray(rows["train_val"], np.int64), np.asarray(rows["test"], np.int64)


def _chestxray_boxes(path: str, row_of: dict[str, int], original: int, size: int) -> dict:
    """Row -> [(class, x, y, w, h)] from BBox_List_2017.csv, rescaled to ``size``."""
    header, records, lines = read_csv(path, ("Image Index", "Finding Label"))
    coords = [
        c if c in header else fallback
        for c, fallback in (("Bbox [x", "x"), ("y", "y"), ("w", "w"), ("h]", "h"))
    ]
    missing = [c for c in coords if c not in header]
    if missing:
        raise ValueError(f"{path}:1: missing column(s) {missing}; header is {header}")
    boxes: dict[int, list] = {}
    for record, line in zip(records, lines, strict=True):
        where = f"{path}:{line}"
        name = record["Image Index"].strip()
        if name not in row_of:
            raise ValueError(f"{where}: {name} is not in Data_Entry_2017.csv")
        label = record["Finding Label"].strip()
        label = _BOX_ALIASES.get(label, label)
        if label not in CHESTXRAY14_CLASSES:
            raise ValueError(
                f"{where}: unknown label {label!r}; valid labels: {', '.join(CHESTXRAY14_CLASSES)}"
            )
        box = parse_box([record[c] for c in coords], where, (original, original), size)
        boxes.setdefault(row_of[name], []).append((CHESTXRAY14_CLASSES.index(label), *box))
    return boxes


@register_dataset("chestxray14")
def build_chestxray14(config: ml_collections.ConfigDict) -> DatasetSplits:
    """NIH ChestX-ray14 (Wang et al. 2017) as used by Khakzar et al. (seed 002).

    Args:
        config: The ``data`` section (fields in the module docstring).

    Returns:
        ``DatasetSplits`` with ``train`` / ``val`` / ``test`` sources, labels
        float32 multi-hot ``[N, 14]`` in ``CHESTXRAY14_CLASSES`` order ("No
        Finding" is all zeros), ``input_shape=(S, S, 1)``, ``num_classes=14``,
        ``bounds=(0, 1)``; each source's ``boxes`` are rescaled from the
        ``original_size`` frame to ``S``.

    Raises:
        FileNotFoundError: A missing file, or a missing image (CSV file and line).
        ValueError: ``file:line`` for unknown labels, bad or outside boxes,
            list entries not in the CSV or in both lists; patient leakage.
    """
    root = config_root(config, "root")
    size = config_int(config, "image_size", 224, 1)
    val_fraction = config_float(config, "val_fraction", 0.1, 0.0, 1.0)
    seed = config_int(config, "seed", 0, 0)
    original = config_int(config, "original_size", 1024, 1)
    entry_csv = os.path.join(root, "Data_Entry_2017.csv")
    _, records, lines = read_csv(entry_csv, ("Image Index", "Finding Labels", "Patient ID"))
    row_of: dict[str, int] = {}
    labels = np.zeros((len(records), len(CHESTXRAY14_CLASSES)), np.float32)
    for i, (record, line) in enumerate(zip(records, lines, strict=True)):
        name = record["Image Index"].strip()
        if name in row_of:
            raise ValueError(f"{entry_csv}:{line}: {name} repeats line {lines[row_of[name]]}")
        row_of[name] = i
        labels[i] = _chestxray_labels(record["Finding Labels"], f"{entry_csv}:{line}")
    patients = np.asarray([r["Patient ID"].strip() for r in records])
    train_val, test = _chestxray_lists(root, row_of, entry_csv, lines)
    parts = patient_split(patients[train_val], {"val": val_fraction}, seed)
    rows = {"train": train_val[parts["train"]], "val": train_val[parts["val"]], "test": test}
    rows = {split: r for split, r in rows.items() if len(r)}
    check_patient_leakage({s: patients[r] for s, r in rows.items()}, entry_csv)
    rows = cap_rows(rows, config_int(config, "max_examples", 0, 0))
    found = _find_images(root)
    paths = [""] * len(records)
    for row in np.concatenate(list(rows.values())):
        name = records[row]["Image Index"].strip()
        if name not in found:
            raise FileNotFoundError(
                f"{entry_csv}:{lines[row]}: image file not found: {name} "
                f"(looked in {root}/images and {root}/images_*/images)"
            )
        paths[row] = found[name]
    if config.get("verify_images", True):
        used = np.sort(np.concatenate(list(rows.values())))
        verify_images(
            [paths[r] for r in used],
            [f"{entry_csv}:{lines[r]}" for r in used],
            channels=1,
            image_size=size,
            source=entry_csv,
        )
    boxes = _chestxray_boxes(os.path.join(root, "BBox_List_2017.csv"), row_of, original, size)
    splits = make_sources(
        paths,
        labels,
        boxes,
        rows,
        patients,
        image_size=size,
        channels=1,
        cache_dir=config_optional_path(config, "cache_dir"),
        class_names=CHESTXRAY14_CLASSES,
        decode_threads=config_int(config, "decode_threads", 0, 0),
    )
    log.info("chestxray14: %s", {s: (len(v), len(v.boxes)) for s, v in splits.items()})
    return DatasetSplits(
        splits, (size, size, 1), len(CHESTXRAY14_CLASSES), (0.0, 1.0), "chestxray14"
    )


@register_dataset("covid_ct")
def build_covid_ct(config: ml_collections.ConfigDict) -> DatasetSplits:
    """SARS-CoV-2 CT-scan slices (Soares et al. 2020) with the split of Ma et al. (seed 004).

    Args:
        config: The ``data`` section (fields in the module docstring).

    Returns:
        ``DatasetSplits`` with ``train`` / ``val`` / ``test`` sources (int32
        labels: 0 non-COVID, 1 COVID; in a split the classes alternate, each
        in file-name order, so ``max_examples`` keeps both),
        ``input_shape=(S, S, channels)``, ``num_classes=2``, ``bounds=(0, 1)``.

    Raises:
        FileNotFoundError: A class folder is missing.
        ValueError: A class folder holds too few images for the requested split.
    """
    root = config_root(config, "root")
    size = config_int(config, "image_size", 224, 1)
    channels = config_int(config, "channels", 1, 1)
    if channels not in (1, 3):
        raise ValueError(f"data.channels must be 1 or 3, got {channels}")
    seed = config_int(config, "seed", 0, 0)
    num_test = config_int(config, "test_per_class", 200, 0)
    num_val = config_int(config, "val_per_class", 30, 0)
    paths: list[str] = []
    labels: list[int] = []
    # Split -> (rank within its class, class, row): sorted, the classes alternate.
    keyed: dict[str, list[tuple[int, int, int]]] = {"train": [], "val": [], "test": []}
    for label, folder in enumerate(("non-COVID", "COVID")):
        directory = os.path.join(root, folder)
        if not os.path.isdir(directory):
            raise FileNotFoundError(f"covid_ct: class folder not found: {directory}")
        files = sorted(
            e.path for e in os.scandir(directory) if e.name.lower().endswith(_IMAGE_SUFFIXES)
        )
        if len(files) <= num_test + num_val:
            raise ValueError(
                f"covid_ct: {directory} holds {len(files)} images; need more than "
                f"data.test_per_class + data.val_per_class = {num_test + num_val}"
            )
        order = np.random.default_rng([seed, label]).permutation(len(files))
        chosen = {"test": order[:num_test], "val": order[num_test : num_test + num_val]}
        chosen["train"] = order[num_test + num_val :]
        for split, picks in chosen.items():
            keyed[split] += [(k, label, len(paths) + int(i)) for k, i in enumerate(np.sort(picks))]
        paths += files
        labels += [label] * len(files)
    rows_np = {s: np.asarray([r for *_, r in sorted(k)], np.int64) for s, k in keyed.items() if k}
    rows_np = cap_rows(rows_np, config_int(config, "max_examples", 0, 0))
    if config.get("verify_images", True):
        used = np.sort(np.concatenate(list(rows_np.values())))
        verify_images(
            [paths[r] for r in used],
            [os.path.dirname(paths[r]) for r in used],
            channels=channels,
            image_size=size,
            source=f"covid_ct {root}",
        )
    splits = make_sources(
        paths,
        np.asarray(labels, np.int32),
        {},
        rows_np,
        image_size=size,
        channels=channels,
        cache_dir=config_optional_path(config, "cache_dir"),
        class_names=("non-COVID", "COVID"),
        decode_threads=config_int(config, "decode_threads", 0, 0),
    )
    log.info("covid_ct: %s", {s: len(v) for s, v in splits.items()})
    return DatasetSplits(splits, (size, size, channels), 2, (0.0, 1.0), "covid_ct")


__all__ = ["CHESTXRAY14_CLASSES", "build_chestxray14", "build_covid_ct", "build_csv_manifest"]
