"""Cross-validation folds: patient-grouped k-fold partitions and subset views of a split.

ARFL (Hao et al., seed 003, §4.2) reports every image experiment as mean (std)
over five-fold cross-validation; ``folds`` in an experiment config turns any
run into one run per fold. Two ways to form the folds:

* ``cv.mode = "kfold"``: the loaded ``train`` split is partitioned by
  scikit-learn (``StratifiedGroupKFold`` when the source knows patient ids and
  labels are single-label, ``GroupKFold`` for multi-hot labels with patient
  ids, else ``StratifiedKFold`` / ``KFold``), shuffled with ``data.seed``.
  Fold ``k``'s part becomes the split named by ``cv.holdout`` (``"val"``: the
  data's own test split stays the test; ``"test"``: classic cross-validation
  where each fold is tested once) and the other parts the new ``train``.
  Splits are ``SubsetSource`` views: no image is copied or decoded twice.
* ``cv.mode = "manifest"``: the CSV manifest's ``fold`` column defines the
  folds (the ARFL mammography protocol); fold ``k`` reads the data with
  ``data.test_fold = k`` and ``data.val_fold = (k + 1) % folds``.
"""

import dataclasses
import warnings

import ml_collections
import numpy as np
from sklearn import model_selection

from arjax.config_lib import ConfigError, check_choice
from arjax.data.pipeline import INDEX_KEY, ArraySource, RecordSource
from arjax.data.registry import DatasetSplits, load_dataset

CV_MODES = ("kfold", "manifest")
HOLDOUT_SPLITS = ("test", "val")
# Registered datasets whose reader takes data.test_fold / data.val_fold.
MANIFEST_FOLD_DATASETS = ("csv_manifest", "synthetic_lesions")


def validate(cfg: ml_collections.ConfigDict) -> None:
    """Checks ``folds`` and ``cv.*`` of an experiment config (no data are read).

    Raises:
      ConfigError: naming the field and the valid choices.
    """
    num_folds = cfg.get("folds", 0)
    valid = isinstance(num_folds, int) and not isinstance(num_folds, bool)
    if not valid or not (num_folds == 0 or num_folds >= 2):
        raise ConfigError(f"folds={num_folds!r}; valid: 0 (no cross-validation) or an int >= 2")
    if not num_folds:
        return
    if "cv" not in cfg:
        raise ConfigError("folds > 0 needs a cv section: cv=dict(mode='kfold', holdout='val')")
    mode = check_choice(cfg, "cv.mode", CV_MODES)
    if mode == "kfold":
        check_choice(cfg, "cv.holdout", HOLDOUT_SPLITS)
    elif cfg.data.name not in MANIFEST_FOLD_DATASETS:
        raise ConfigError(
            f"cv.mode='manifest' reads the manifest's fold column; data.name "
            f"{cfg.data.name!r} has none (valid: {', '.join(MANIFEST_FOLD_DATASETS)}); "
            "use cv.mode='kfold'"
        )


class SubsetSource:
    """A view of some examples of a parent source; nothing is copied.

    Example ``i`` of the view is example ``indices[i]`` of the parent. ``gather``
    returns ``"index" = i`` (the position in the view), so per-example state
    such as the IMA margin table is keyed by the view's own positions.
    Picklable when the parent is (grain worker processes).

    Args:
        parent: A ``RecordSource`` (e.g. ``ImageFileSource``, ``ArraySource``)
            or a dict of equal-length arrays.
        indices: int ``[n]`` positions in the parent.

    Attributes:
        parent: The parent source.
        indices: int64 ``[n]``.
    """

    def __init__(self, parent, indices: np.ndarray):
        self.parent = parent if isinstance(parent, RecordSource) else ArraySource(parent)
        self.indices = np.asarray(indices, np.int64).reshape(-1)
        if self.indices.size == 0:
            raise ValueError("a subset needs at least one example")
        if self.indices.min() < 0 or self.indices.max() >= len(self.parent):
            raise IndexError(f"subset indices outside [0, {len(self.parent)})")

    def __len__(self) -> int:
        return len(self.indices)

    def __repr__(self) -> str:
        return f"SubsetSource({len(self)} of {self.parent!r})"

    @property
    def labels(self) -> np.ndarray:
        """The parent's labels at ``indices``: ``[n]`` or ``[n, C]``."""
        return np.asarray(self.parent.labels)[self.indices]

    @property
    def patients(self) -> np.ndarray | None:
        """Patient id per example ``[n]``, or None when the parent has none."""
        patients = getattr(self.parent, "patients", None)
        return None if patients is None else np.asarray(patients)[self.indices]

    @property
    def boxes(self) -> dict[int, list]:
        """The parent's boxes re-keyed by position in the view (``{}`` if it has none)."""
        parent_boxes = getattr(self.parent, "boxes", None) or {}
        return {
            i: parent_boxes[r] for i, r in enumerate(self.indices.tolist()) if r in parent_boxes
        }

    @property
    def paths(self) -> list[str]:
        """The parent's file paths at ``indices`` (file-backed parents only)."""
        return [self.parent.paths[r] for r in self.indices.tolist()]

    def __getattr__(self, name: str):
        # Attributes that do not depend on the example (class_names, image_size,
        # channels) come from the parent. Private names never do (pickling).
        if name.startswith("_") or name in ("parent", "indices"):
            raise AttributeError(name)
        return getattr(self.parent, name)

    def gather(self, positions: np.ndarray) -> dict[str, np.ndarray]:
        """Reads examples ``positions`` of the view (the parent's ``indices[positions]``).

        Args:
            positions: int ``[B]`` in ``[0, n)``.

        Returns:
            The parent's fields ``[B, ...]`` with int32 ``"index"`` = ``positions``.
        """
        positions = np.asarray(positions, np.int64).reshape(-1)
        batch = self.parent.gather(self.indices[positions])
        batch[INDEX_KEY] = positions.astype(np.int32)
        return batch

    def __getitem__(self, position: int) -> dict[str, np.ndarray]:
        """Example ``position`` (grain ``RandomAccessDataSource`` protocol)."""
        return {k: v[0] for k, v in self.gather(np.array([int(position)])).items()}


def fold_of_examples(
    labels: np.ndarray, num_folds: int, seed: int, groups: np.ndarray | None = None
) -> np.ndarray:
    """Fold id of every example: a seeded, stratified, patient-grouped k-fold partition.

    Args:
        labels: int ``[N]`` class ids (stratified) or multi-hot ``[N, C]`` (not
            stratified: scikit-learn stratifies single labels only).
        num_folds: ``k >= 2``.
        seed: Shuffle seed (``random_state``).
        groups: Patient id per example ``[N]``, or None. All examples of a
            patient get the same fold.

    Returns:
        int64 ``[N]`` in ``[0, k)``; every fold is non-empty.

    Raises:
        ValueError: Naming ``folds`` when there are fewer examples (or
            patients) than folds.
    """
    labels = np.asarray(labels)
    n = len(labels)
    units = n if groups is None else len(np.unique(groups))
    if num_folds < 2 or num_folds > units:
        what = "examples" if groups is None else "patients"
        raise ValueError(f"folds={num_folds} needs 2 <= folds <= the {units} training {what}")
    stratify = labels.ndim == 1
    kw = dict(n_splits=num_folds, shuffle=True, random_state=seed)
    if groups is None:
        splitter = (
            model_selection.StratifiedKFold(**kw) if stratify else model_selection.KFold(**kw)
        )
    elif stratify:
        splitter = model_selection.StratifiedGroupKFold(**kw)
    else:
        splitter = model_selection.GroupKFold(**kw)
    fold = np.full(n, -1, np.int64)
    with warnings.catch_warnings():
        # "The least populated class has only m members": still a valid partition.
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        y = labels if stratify else None
        for k, (_, held) in enumerate(splitter.split(np.zeros(n), y, groups)):
            fold[held] = k
    return fold


def kfold_datasets(
    dataset: DatasetSplits, num_folds: int, seed: int, holdout: str
) -> list[DatasetSplits]:
    """One ``DatasetSplits`` per fold of the ``train`` split (``cv.mode="kfold"``).

    Args:
        dataset: The loaded data; its ``train`` split is partitioned.
        num_folds: ``k >= 2``.
        seed: ``data.seed``: the partition is a pure function of it.
        holdout: Split (``"val"`` or ``"test"``) that fold ``k``'s part becomes;
            the dataset must not already have it.

    Returns:
        ``k`` datasets; dataset ``k`` has ``train`` = the other folds and
        ``holdout`` = fold ``k`` (``SubsetSource`` views); other splits are shared.

    Raises:
        ValueError: Naming ``cv.holdout`` when the data already have that
            split, or ``folds`` when it exceeds the examples / patients.
    """
    if holdout in dataset.splits:
        other = next(iter(s for s in HOLDOUT_SPLITS if s != holdout))
        raise ValueError(
            f"cv.holdout={holdout!r}, but the data already have a {holdout!r} split; "
            f"choose cv.holdout={other!r}, or configure the data without a {holdout} split"
        )
    train = dataset.splits["train"]
    source = train if isinstance(train, RecordSource) else ArraySource(train)
    patients = getattr(source, "patients", None)
    fold = fold_of_examples(source.labels, num_folds, seed, patients)
    out = []
    for k in range(num_folds):
        splits = dict(dataset.splits)
        splits["train"] = SubsetSource(source, np.flatnonzero(fold != k))
        splits[holdout] = SubsetSource(source, np.flatnonzero(fold == k))
        out.append(dataclasses.replace(dataset, splits=splits))
    return out


def manifest_fold_config(
    data: ml_collections.ConfigDict, fold: int, num_folds: int
) -> ml_collections.ConfigDict:
    """The ``data`` section of fold ``k`` in ``cv.mode="manifest"``.

    Returns:
        A copy with ``test_fold = k`` and ``val_fold = (k + 1) % num_folds``.
    """
    out = ml_collections.ConfigDict(data.to_dict())
    out.test_fold = int(fold)
    out.val_fold = int((fold + 1) % num_folds)
    return out


def fold_datasets(
    data: ml_collections.ConfigDict, num_folds: int, *, mode: str = "kfold", holdout: str = "val"
) -> list[DatasetSplits]:
    """The data of every fold (all read before any training, so errors come first).

    Args:
        data: The ``data`` config section.
        num_folds: 0 (no cross-validation: one dataset) or ``k >= 2``.
        mode: ``"kfold"`` or ``"manifest"`` (see the module docstring).
        holdout: ``"val"`` or ``"test"`` (``"kfold"`` only).

    Returns:
        ``[dataset]`` without cross-validation, else ``k`` datasets.

    Raises:
        ValueError / FileNotFoundError: From the reader, or naming the
            ``folds`` / ``cv.*`` field at fault.
    """
    if not num_folds:
        return [load_dataset(data)]
    if mode == "manifest":
        out = []
        for k in range(num_folds):
            try:
                out.append(load_dataset(manifest_fold_config(data, k, num_folds)))
            except ValueError as e:
                raise ValueError(f"folds={num_folds} with cv.mode='manifest': fold {k}: {e}") from e
        return out
    return kfold_datasets(load_dataset(data), num_folds, int(data.get("seed", 0) or 0), holdout)
