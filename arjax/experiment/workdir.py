"""The layout and files of a workdir, shared by training and re-evaluation.

A workdir has ``config.json`` (the resolved config) at its top. Its run
directories are the workdir itself or directories below it: ``seed_<s>``
when there are several seeds, ``fold_<k>`` when cross-validating,
``fold_<k>/seed_<s>`` for both (:func:`run_directory`). A run directory holds
``checkpoints/``, ``metrics.jsonl`` (training records), ``result.json`` (the
final evaluation) and plots; ``best/`` and ``phase1/`` inside a run are not runs.
"""

import dataclasses
import fcntl
import json
import logging
import os
import re
import socket
import time

import ml_collections

from arjax import data as data_lib
from arjax import distributed, faults
from arjax.config_lib import ConfigError, to_json
from arjax.evaluation.report import write_text
from arjax.experiment.migrate import migrate_dict

log = logging.getLogger("arjax")

_SKIP = ("checkpoints", "best", "phase1")


def run_directory(workdir: str, fold: int | None, seed: int, num_seeds: int) -> str:
    """Where one run lives: ``<workdir>[/fold_<k>][/seed_<s>]``.

    The fold level exists when cross-validating (``fold`` is not None), the
    seed level when there are several seeds; one fold and one seed train in
    ``workdir`` itself.
    """
    out = workdir if fold is None else os.path.join(workdir, f"fold_{fold}")
    return out if num_seeds == 1 else os.path.join(out, f"seed_{seed}")


# Fields that change how a run executes on the host, not its numbers: a resumed run
# may set them differently from the run that made the workdir.
HOST_ONLY_FIELDS = frozenset({"train.prefetch", "train.compilation_cache"})

# Fields added to the presets after runs were made without them, each with the value
# that does what those runs did: a config.json that lacks the field matches a config
# holding that value, so an older workdir still resumes.
# (``method.*`` fields need none: methods are compared as objects, see ``_same_method``.)
ADDED_FIELDS: dict[str, object] = {
    "train.vmap_seeds": False,
    "model.features_at": "post_activation",
    "model.dtype": "float32",
}


def check_config(workdir: str, cfg: ml_collections.ConfigDict, *, update: bool = True) -> None:
    """Writes ``config.json`` (atomically); refuses to resume a run made with another config.

    Call it only once the config and the data have been checked, so that a run which
    failed before training does not block its corrected retry. Differences in
    ``HOST_ONLY_FIELDS``, and fields of ``ADDED_FIELDS`` that the stored config lacks
    while ``cfg`` holds their old-behaviour value, are accepted; ``config.json`` is
    then rewritten to ``cfg`` (when ``update``).

    Raises:
      ConfigError: the workdir holds a run with a different config (its fields named).
    """
    path = os.path.join(workdir, "config.json")
    text = to_json(cfg)
    if os.path.exists(path):
        with open(path) as f:
            old = f.read()
        if old != text:
            try:
                old_dict = migrate_dict(json.loads(old))  # fields renamed since it was written
            except json.JSONDecodeError as e:
                msg = f"{path} is not valid JSON ({e}); delete it to start over"
                raise ConfigError(msg) from e
            old_flat = _flatten(json.loads(json.dumps(old_dict)))
            new_flat = _flatten(json.loads(text))
            keys = old_flat.keys() | new_flat.keys()
            diff = sorted(k for k in keys if old_flat.get(k) != new_flat.get(k))
            if _same_method(old_dict, cfg):  # e.g. old attack fields vs one spec
                diff = [k for k in diff if not k.startswith("method.")]
            if any(not _compatible(k, old_flat, new_flat) for k in diff):
                raise ConfigError(
                    f"{path} holds a run with a different config (fields {diff[:6]}); "
                    "use another --workdir or delete that one"
                )
            if update:
                log.info("%s: resuming with %s changed or added (results unchanged)", path, diff)
                write_text(path, text)
        return
    write_text(path, text)


def _same_method(old: dict, cfg: ml_collections.ConfigDict) -> bool:
    """Whether a stored config's method equals ``cfg``'s once both are read as methods.

    Configs written by older code spell the same method differently (the training attack
    as separate fields, IMA's derived Δε written into ``method.delta``, fields added
    since with their old behaviour as default): equal method objects train the same.
    """
    from arjax import methods

    try:
        epochs = int(old["train"]["num_epochs"])
        before = methods.from_config(old["method"], num_epochs=epochs)
        now = methods.from_config(cfg.method, num_epochs=int(cfg.train.num_epochs))
    except (ConfigError, KeyError, TypeError, ValueError):
        return False
    return before == now


def _compatible(key: str, old: dict, new: dict) -> bool:
    """Whether ``key``'s difference between the stored and new flat configs keeps results."""
    if key in HOST_ONLY_FIELDS:
        return True
    return key in ADDED_FIELDS and key not in old and new.get(key) == ADDED_FIELDS[key]


def make_workdir(workdir: str) -> None:
    """Creates ``workdir``; an unwritable location is a ``ConfigError`` naming it.

    Raises:
      ConfigError: the directory cannot be created or written (read-only, no
        permission, disk full), before any compute.
    """
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, f".write_test.{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise ConfigError(f"workdir {workdir!r} is not writable: {e.strerror}") from None


def read_only_report(workdir: str, cfg: ml_collections.ConfigDict) -> dict | None:
    """A finished run's ``report.json`` when ``workdir`` cannot be written, else None.

    Re-running the command of a finished run prints its report; on a read-only
    copy (an archive, a shared mount) that must not need a lock or a write.
    """
    report = os.path.join(workdir, "report.json")
    if not os.path.isfile(report) or os.access(workdir, os.W_OK):
        return None
    check_config(workdir, cfg, update=False)  # reads only: a finished run has its config
    log.info("%s is read-only: printing its finished report", workdir)
    with open(report) as f:
        return json.load(f)


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _tuples(value):
    """JSON lists back to the tuples configs use (so overrides type-check)."""
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def load_config(workdir: str) -> ml_collections.ConfigDict:
    """The resolved experiment config a workdir was trained with (``config.json``).

    Written by older arjax, it is read in today's fields (:mod:`arjax.experiment.migrate`).

    Raises:
      ConfigError: naming the missing or unreadable file.
    """
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise ConfigError(f"{path} not found: {workdir!r} is not an arjax workdir")
    try:
        with open(path) as f:
            return ml_collections.ConfigDict(_tuples(migrate_dict(json.load(f))))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON: {e}") from e


@dataclasses.dataclass
class MetricsWriter:
    """Append-only ``metrics.jsonl`` with no torn, duplicated or skipped steps.

    A run killed while writing can leave a cut-off last line; opening the writer
    drops it, so the next record does not land on it. A resumed run replays the
    steps after its checkpoint, so opening with ``resume_step`` also drops the
    records after that step: the replay writes them again, once.

    Only the primary process (:func:`arjax.distributed.is_primary`) touches the file.

    Args:
      path: the ``metrics.jsonl`` file.
      resume_step: the step the run continues from (records after it are dropped);
        None keeps every whole record.
    """

    path: str
    resume_step: int | None = None

    def __post_init__(self) -> None:
        if not distributed.is_primary() or not os.path.exists(self.path):
            return
        with open(self.path, "rb") as f:
            content = f.read()
        lines = content.split(b"\n")[:-1]  # a last line without newline is torn
        kept = [line for line in lines if self._keep(line)]
        if len(kept) != len(lines) or not content.endswith(b"\n"):
            write_text(self.path, b"".join(line + b"\n" for line in kept).decode())

    def _keep(self, line: bytes) -> bool:
        if self.resume_step is None:
            return True
        try:
            return int(json.loads(line).get("step", 0)) <= self.resume_step
        except (ValueError, AttributeError):  # not a record: the reader names its line
            return True

    def write(self, record: dict) -> None:
        """Appends one JSON record as one line (one ``write`` call; process 0 only)."""
        if not distributed.is_primary():
            return
        line = json.dumps(record, default=float) + "\n"
        with open(self.path, "a") as f:
            f.write(line)
        faults.point("record")


class WorkdirLock:
    """One run per workdir: an exclusive ``flock`` on ``<workdir>/.lock``.

    The file names its holder (``pid``, ``host``, start time) for the message a
    second process gets. The kernel drops the lock when its holder dies (even by
    SIGKILL), so a lock left by a dead process is taken over, with a log line.
    A context manager; :meth:`release` is idempotent.

    In a multi-process run (:mod:`arjax.distributed`) only process 0 takes the
    lock, and every process learns whether it could: all of them then fail
    together, rather than the others waiting forever in their first collective.

    Raises:
      ConfigError: on enter, when another live process holds the lock (named).
    """

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, ".lock")
        self._fd: int | None = None

    def __enter__(self) -> "WorkdirLock":
        error = None
        if distributed.is_primary():
            try:
                self._take()
            except ConfigError as e:
                error = e
        if distributed.any_process(error is not None):
            self.release()
            raise error or ConfigError(
                f"workdir {os.path.dirname(self.path)!r} is in use (process 0 of this run "
                f"could not take {self.path})"
            )
        return self

    def _take(self) -> None:
        """Takes the ``flock`` (this process's), or raises ``ConfigError`` naming its holder."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(os.read(fd, 4096))
            os.close(fd)
            raise ConfigError(
                f"workdir {os.path.dirname(self.path)!r} is in use by {holder}; wait for it to "
                f"finish or stop it (lock file {self.path})"
            ) from None
        stale = os.read(fd, 4096)
        if stale.strip():
            log.info("taking over the lock of %s (no longer running)", _holder(stale))
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.ctime()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Empties the lock file and releases the lock."""
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __exit__(self, *exc) -> None:
        self.release()


def _holder(content: bytes) -> str:
    """``pid P on host H (since T)`` from a lock file's content."""
    try:
        h = json.loads(content)
        return f"pid {h['pid']} on host {h['host']} (since {h['since']})"
    except (ValueError, KeyError, TypeError):
        return "another process"


def find_run_dirs(workdir: str) -> list[str]:
    """Run directories at or below ``workdir`` (those holding ``checkpoints/``), sorted."""
    runs = []
    for root, dirs, _ in os.walk(workdir):
        if "checkpoints" in dirs:
            runs.append(root)
        dirs[:] = sorted(d for d in dirs if d not in _SKIP)
    return sorted(runs, key=lambda r: os.path.relpath(r, workdir))


def relative(run_dir: str, workdir: str) -> str:
    """``run_dir`` relative to ``workdir`` ("" for the workdir itself)."""
    rel = os.path.relpath(run_dir, workdir)
    return "" if rel == "." else rel


def run_seed(cfg: ml_collections.ConfigDict, workdir: str, run_dir: str) -> int:
    """A run's seed: its ``result.json``, else a ``seed_<s>`` path part, else the only seed."""
    result = os.path.join(run_dir, "result.json")
    if os.path.isfile(result):
        with open(result) as f:
            seed = json.load(f).get("seed")
        if seed is not None:
            return int(seed)
    for part in reversed(relative(run_dir, workdir).split(os.sep)):
        if m := re.fullmatch(r"seed_(\d+)", part):
            return int(m.group(1))
    if len(cfg.seeds) == 1:
        return int(cfg.seeds[0])
    raise ConfigError(f"cannot tell the seed of run {run_dir!r} (seeds {tuple(cfg.seeds)})")


def dataset_for_run(
    datasets: list[data_lib.DatasetSplits], workdir: str, run_dir: str
) -> data_lib.DatasetSplits:
    """The splits a run was trained on.

    Args:
      datasets: :func:`arjax.experiment.setup.load_folds` of the workdir's config: one
        dataset without cross-validation, else one per fold.
      workdir: the training workdir.
      run_dir: a run directory below it; ``fold_<k>`` in its path picks fold k.

    Raises:
      ConfigError: a ``fold_<k>`` path with no such fold in the config, or a
        cross-validated workdir's run outside any ``fold_<k>``.
    """
    parts = relative(run_dir, workdir).split(os.sep)
    folds = [int(m.group(1)) for p in parts if (m := re.fullmatch(r"fold_(\d+)", p))]
    if not folds:
        if len(datasets) != 1:
            raise ConfigError(f"run {run_dir!r} is not inside a fold_<k> directory")
        return datasets[0]
    if len(datasets) == 1 or folds[-1] >= len(datasets):
        raise ConfigError(
            f"run {run_dir!r} is fold {folds[-1]}, but the config has folds={len(datasets)}"
            if len(datasets) > 1
            else f"run {run_dir!r} is a fold, but the config has no folds"
        )
    return datasets[folds[-1]]
