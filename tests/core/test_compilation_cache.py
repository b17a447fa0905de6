"""JAX's persistent compilation cache for runs (``arjax.compilation_cache``)."""

import json
import os
import subprocess
import sys

import pytest

from arjax import compilation_cache
from arjax.config_lib import ConfigError
from arjax.experiment import presets, train

# One tiny moons run in a fresh process; prints how its compilations went.
_RUN = """
import json, sys
import jax
from jax import monitoring
counts = {"requests": 0, "hits": 0, "backend_s": 0.0}
def on_event(name, **kw):
    if name == "/jax/compilation_cache/compile_requests_use_cache":
        counts["requests"] += 1
    elif name == "/jax/compilation_cache/cache_hits":
        counts["hits"] += 1
def on_duration(name, secs, **kw):
    if name == "/jax/core/compile/backend_compile_duration":
        counts["backend_s"] += secs
monitoring.register_event_listener(on_event)
monitoring.register_event_duration_secs_listener(on_duration)
from arjax.experiment import presets, train
cfg = presets.base_config()
cfg.data.sizes = dict(train=64, test=32)
cfg.train.update(batch_size=32, num_epochs=2, steps_per_call=2, log_every=2,
                 eval_every=0, checkpoint_every=4, prefetch=0)
cfg.eval.update(batch_size=32, num_steps=1, eps=(0.0,), losses=("ce",))
train.run(cfg, sys.argv[1], progress=False)
print("COUNTS" + json.dumps(counts))
print(counts, file=sys.stderr)
"""


def _run_in_new_process(workdir: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in (compilation_cache.ENV_VAR, "XLA_FLAGS")}
    env["JAX_PLATFORMS"] = "cpu"
    done = subprocess.run(
        [sys.executable, "-c", _RUN, workdir], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(ln for ln in done.stdout.splitlines() if ln.startswith("COUNTS"))
    return json.loads(line[len("COUNTS") :])


def test_a_second_process_compiles_its_run_from_the_cache(tmp_path):
    first = _run_in_new_process(str(tmp_path / "run_a"))
    # "auto" without $ARJAX_CACHE_DIR: next to the workdir.
    cache = tmp_path / compilation_cache.DIRECTORY_NAME
    assert cache.is_dir() and any(cache.iterdir())
    assert first["requests"] > 5 and first["hits"] == 0
    second = _run_in_new_process(str(tmp_path / "run_b"))  # same config, a fresh run
    # Every program of the second run (train steps, evaluation, attacks) loads from disk.
    assert second["requests"] == first["requests"] and second["hits"] == second["requests"]


def test_settings_name_their_directory_and_bad_ones_fail_before_compute(tmp_path, monkeypatch):
    monkeypatch.delenv(compilation_cache.ENV_VAR, raising=False)
    workdir = str(tmp_path / "study" / "run")
    expected = str(tmp_path / "study" / compilation_cache.DIRECTORY_NAME)
    assert compilation_cache.cache_directory("auto", workdir) == expected
    assert compilation_cache.cache_directory("off", workdir) is None
    assert compilation_cache.cache_directory(str(tmp_path / "c")) == str(tmp_path / "c")
    monkeypatch.setenv(compilation_cache.ENV_VAR, str(tmp_path / "env"))
    assert compilation_cache.cache_directory("auto", workdir) == str(tmp_path / "env")
    monkeypatch.setenv(compilation_cache.ENV_VAR, "off")  # the device check's no-cache mode
    assert compilation_cache.cache_directory("auto", workdir) is None
    assert not (tmp_path / "off").exists() and not os.path.exists("off")
    cfg = presets.base_config()
    cfg.train.compilation_cache = ""
    with pytest.raises(ConfigError, match="train.compilation_cache.*auto, off"):
        train.validate(cfg)
