"""Workdir files that must survive kills and failed starts (issue 20, items 3 and 9)."""

import json
import warnings

import pytest
from helpers import tiny_config

from arjax.config_lib import ConfigError
from arjax.evaluation.report import read_jsonl
from arjax.experiment import train
from arjax.experiment.workdir import MetricsWriter, check_config


def test_writer_drops_a_torn_last_line_before_appending(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 4, "train/loss": 0.5}\n{"step": 8, "train/lo')  # killed mid-write
    writer = MetricsWriter(str(path))
    writer.write({"step": 8, "train/loss": 0.25})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "dropping truncated last line" any more
        records = read_jsonl(path)
    assert records == [{"step": 4, "train/loss": 0.5}, {"step": 8, "train/loss": 0.25}]


def test_writer_keeps_an_intact_file(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 4}\n')
    MetricsWriter(str(path)).write({"step": 8})
    assert [r["step"] for r in read_jsonl(path)] == [4, 8]


def test_a_run_failing_its_data_check_leaves_no_config_json(tmp_path):
    cfg = tiny_config()
    cfg.train.batch_size = 4096  # more than the 512 training examples: fails at the data check
    with pytest.raises(ConfigError, match="exceeds the 512 training examples"):
        train.run(cfg, str(tmp_path), progress=False)
    assert not (tmp_path / "config.json").exists()  # the corrected retry is not refused


def test_config_json_is_written_whole_and_compared(tmp_path):
    cfg = tiny_config()
    check_config(str(tmp_path), cfg)
    assert json.loads((tmp_path / "config.json").read_text())["name"] == "tiny"
    assert not list(tmp_path.glob("*.tmp"))
    check_config(str(tmp_path), cfg)  # same config: accepted
    (tmp_path / "config.json").write_text("")  # e.g. a disk that filled up earlier
    with pytest.raises(ConfigError, match="config.json is not valid JSON"):
        check_config(str(tmp_path), tiny_config(num_epochs=9))


def test_an_older_workdir_resumes_across_added_and_host_only_fields(tmp_path):
    cfg = tiny_config()
    check_config(str(tmp_path), cfg)
    stored = json.loads((tmp_path / "config.json").read_text())
    del stored["train"]["vmap_seeds"]  # a run made before the field existed
    stored["train"]["prefetch"] = 0  # made with the synchronous loop
    (tmp_path / "config.json").write_text(json.dumps(stored))
    check_config(str(tmp_path), cfg)  # accepted: the old behaviour's value, a host-only field
    assert json.loads((tmp_path / "config.json").read_text())["train"]["vmap_seeds"] is False
    (tmp_path / "config.json").write_text(json.dumps(stored))  # again without the field
    cfg.train.vmap_seeds = True  # not what the old run did
    with pytest.raises(ConfigError, match=r"different config \(fields \['train.prefetch', "
                       r"'train.vmap_seeds'\]\)"):  # fmt: skip
        check_config(str(tmp_path), cfg)


def test_a_head_that_cannot_hold_the_classes_fails_before_compute(tmp_path):
    cfg = tiny_config()
    cfg.model.num_outputs = 3  # two-moons has 2 classes
    with pytest.raises(ConfigError, match="model.num_outputs=3, but moons has 2 classes"):
        train.run(cfg, str(tmp_path), progress=False)
    assert not (tmp_path / "config.json").exists()
