"""JAX's persistent compilation cache for arjax runs: a rerun compiles from disk.

XLA:CPU takes 2-6 s to compile a CNN's adversarial train step and its attacks, and a run
compiles tens of programs (train step, evaluation, every attack of the report). JAX can
store compiled executables on disk, keyed by the program, its compiler options, the
backend and the jax/jaxlib versions, and load them instead of compiling
(``jax_compilation_cache_dir``). :func:`enable` turns that on for a run, with every
program cached (JAX by default skips programs that compile in under 1 s, and those are
most of a run's programs).

Where (``train.compilation_cache``):

* ``"auto"`` (the default): ``$ARJAX_CACHE_DIR`` when set (``ARJAX_CACHE_DIR=off``: no
  cache, for every run of the process tree), else
  ``<workdir's parent>/.arjax_compilation_cache`` (so runs of one study, and the reruns
  and resumptions of a run, share it), else, if that folder cannot be written, the user
  cache dir (``$XDG_CACHE_HOME/arjax/compilation_cache``, ``~/.cache/...``);
* ``"off"``: no persistent cache;
* any other string: that directory.

A stale entry cannot be used by mistake: the key covers the jaxlib version, the device
kind and the program itself, so a new jaxlib or a changed model simply compiles anew.
The directory is not size-limited (``jax_compilation_cache_max_size`` unset); delete it
to reclaim the space. This module is about *where compiled programs are kept*;
``arjax.compilation`` chooses *how they are compiled* (XLA options).
"""

import logging
import os

import jax
from jax.experimental.compilation_cache import compilation_cache as jax_cache

log = logging.getLogger(__name__)

ENV_VAR = "ARJAX_CACHE_DIR"
DIRECTORY_NAME = ".arjax_compilation_cache"
SETTINGS = ("auto", "off", "<directory>")


def user_cache_dir() -> str:
    """``$XDG_CACHE_HOME/arjax`` (``~/.cache/arjax`` when unset): arjax's per-user cache."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "arjax")


def _writable(directory: str) -> bool:
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError:
        return False
    return os.access(directory, os.W_OK | os.X_OK)


def cache_directory(setting: str, workdir: str | None = None) -> str | None:
    """The directory a ``train.compilation_cache`` setting names (None for ``"off"``).

    Args:
      setting: ``"auto"``, ``"off"`` or a directory (see the module docstring).
      workdir: the run's output directory; ``"auto"`` puts the cache next to it.

    Returns:
      an absolute directory (created), or None.

    Raises:
      ValueError: ``setting`` is not a non-empty string, naming the valid choices.
    """
    if not isinstance(setting, str) or not setting:
        raise ValueError(
            f"train.compilation_cache must be a string, got {setting!r}; valid: "
            f"{', '.join(SETTINGS)}"
        )
    if setting == "off":
        return None
    if setting != "auto":
        return os.path.abspath(os.path.expanduser(setting))
    if os.environ.get(ENV_VAR) == "off":
        return None
    if os.environ.get(ENV_VAR):
        return os.path.abspath(os.path.expanduser(os.environ[ENV_VAR]))
    if workdir:
        parent = os.path.dirname(os.path.abspath(workdir))
        candidate = os.path.join(parent, DIRECTORY_NAME)
        if _writable(candidate):
            return candidate
    return os.path.join(user_cache_dir(), "compilation_cache")


def enable(setting: str = "auto", workdir: str | None = None) -> str | None:
    """Turns on JAX's persistent compilation cache for this process (or off, for ``"off"``).

    Every program is cached, however fast it compiles (min compile time and entry size 0).
    Calling it again with another directory moves the cache there (JAX's cache object is
    reset); the in-memory caches of already compiled functions are unaffected.

    Args:
      setting: ``train.compilation_cache``: ``"auto"``, ``"off"`` or a directory.
      workdir: the run's output directory (for ``"auto"``).

    Returns:
      the cache directory in use, or None when off.

    Raises:
      ValueError: a bad setting, or a directory that cannot be created or written.
    """
    directory = cache_directory(setting, workdir)
    current = (
        jax.config.jax_compilation_cache_dir if jax.config.jax_enable_compilation_cache else None
    )
    if directory is None:
        if current is not None:
            jax.config.update("jax_enable_compilation_cache", False)
            jax_cache.reset_cache()
        return None
    if not _writable(directory):
        raise ValueError(
            f"train.compilation_cache={setting!r}: cannot write the directory {directory}; "
            f"set it to a writable directory, 'auto' or 'off'"
        )
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    if current != directory:
        jax.config.update("jax_enable_compilation_cache", True)
        jax.config.update("jax_compilation_cache_dir", directory)
        jax_cache.reset_cache()
        log.info("persistent compilation cache: %s", directory)
    return directory
