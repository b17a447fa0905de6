"""PyTorch models in experiments: ``model.name="torch"`` trains, resumes, evaluates, exports.

``configs/torch_resnet18.py`` (a ResNet-18 factory, random init) at smoke size with
``ima`` and ``trades``; ``arjax-evaluate --attack autoattack`` on its workdir; a kill -9
of a torch-model run resumed to the report of an uninterrupted one. The factory is
torchvision's when it imports, else the plain-torch ResNet-18 of ``tests/torch_nets.py``.
"""

import importlib.util
import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchax")

from safetensors.torch import load_file  # noqa: E402
from torch_nets import RESNET18_FACTORY, resnet18, torchvision_or_none  # noqa: E402

from arjax import evaluate, faults, launch, parallel  # noqa: E402
from arjax.config_lib import ConfigError  # noqa: E402
from arjax.experiment import setup  # noqa: E402
from arjax.experiment import train as loop  # noqa: E402
from arjax.models import build_model  # noqa: E402
from arjax.models.torch_bridge import STATE_DICT_FILE  # noqa: E402

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.dirname(TESTS)


def _resnet18_config(variant: str):
    spec = importlib.util.spec_from_file_location(
        "torch_resnet18", os.path.join(ROOT, "configs", "torch_resnet18.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg = module.get_config(f"{variant},smoke")
    if torchvision_or_none() is None:  # CI: PyPI has no CPU torchvision for torch 2.13
        cfg.model.torch_factory = RESNET18_FACTORY
    cfg.train.num_devices = 1  # the 8-device step is tests/models/test_from_torch.py's
    cfg.eval.masking_checks = "off"
    if variant == "ima":  # margins from each step's BPGD: no second ResNet-18 BPGD program
        cfg.method.margin_update = "batch"  # (the epoch pass is IMA's own, tested on moons)
    return cfg


def _check_exported_weights(run_dir, cfg):
    """The run's state_dict.safetensors loads into a fresh ResNet-18 and gives arjax's logits."""
    net = resnet18(num_classes=10)
    net.load_state_dict(load_file(os.path.join(run_dir, STATE_DICT_FILE)))  # strict
    net.eval()
    dataset = setup.load_folds(cfg)[0]
    model, state, _ = setup.restore_state(cfg, dataset, run_dir, 0, parallel.make_mesh(1))
    x = np.random.default_rng(0).uniform(0, 1, (4, 32, 32, 3)).astype(np.float32)
    ours = model.logits_fn(state.params, state.batch_stats)(x)
    ref = net(torch.tensor(x).permute(0, 3, 1, 2)).detach().numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", ["ima", "trades"])
def test_resnet18_factory_trains_resumes_and_exports(variant, tmp_path):
    cfg = _resnet18_config(variant)
    workdir = str(tmp_path / "run")
    report = loop.run(cfg, workdir, progress=False)
    summary = report["summary"]
    assert 0.0 <= summary["clean/accuracy"]["mean"] <= 1.0
    assert np.isfinite(summary["clean/loss"]["mean"])
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().count("\n")
    again = loop.run(cfg, workdir, progress=False)  # resumed: finished, not retrained
    assert again["summary"] == json.loads(json.dumps(summary))
    assert (tmp_path / "run" / "metrics.jsonl").read_text().count("\n") == lines
    _check_exported_weights(workdir, cfg)
    if variant == "ima":  # the full evaluation suite's AutoAttack on the trained torch model
        out = evaluate.main(
            ["--workdir", workdir, "--attack", "autoattack-fast", "--eps", "0.03", "--steps", "2"]
            + ["--nocurves", "--noprogress", "--max_examples", "16", "--masking_checks", "off"]
        )
        rows = out["summary"]
        key = next(k for k in rows if k.startswith("autoattack") and k.endswith("accuracy"))
        assert 0.0 <= rows[key]["mean"] <= rows["clean/accuracy"]["mean"]


def _small_config_file(path) -> str:
    """A config file (tests/ on sys.path for the factory): a small torch net, 8 steps."""
    text = f"""import sys
sys.path.insert(0, {TESTS!r})
from arjax.experiment.presets import base_config
from arjax.experiment.presets import method_config


def get_config():
    c = base_config()
    c.name = "torch_small"
    c.data = dict(name="synthetic_images", sizes=dict(train=64, test=32),
                  image_shape=(8, 8, 3), num_classes=3, noise=0.1, seed=0)
    c.model = dict(name="torch", torch_factory="torch_nets:small_net",
                   torch_kwargs=dict(dropout=0.3), torch_features="act")
    c.method = method_config("arfl", r=0.5, lam=0.5, attack="fgsm:linf:0.05")
    c.train.update(batch_size=16, num_epochs=2, steps_per_call=2, log_every=2,
                   eval_every=4, checkpoint_every=4, num_devices=1)
    c.eval.update(batch_size=32, num_steps=2, eps=(0.0, 0.05), eps_l2=(), losses=("ce",))
    return c
"""
    path.write_text(text)
    return str(path)


def test_kill_9_of_a_torch_model_run_resumes_to_the_same_report(tmp_path):
    config = _small_config_file(tmp_path / "small.py")
    straight = launch.main(["--noprogress", f"--config={config}", f"--workdir={tmp_path / 's'}"])
    for fault in ("step@3",):  # after the first checkpoint (step 4 of 8)
        workdir = tmp_path / fault.replace("@", "_")
        killed = subprocess.run(
            [sys.executable, "-m", "arjax.launch", "--noprogress"]
            + [f"--config={config}", f"--workdir={workdir}"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, faults.ENV: fault},
        )
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
        resumed = launch.main(["--noprogress", f"--config={config}", f"--workdir={workdir}"])
        assert resumed["summary"] == straight["summary"], fault
        assert resumed["runs"][0]["robust_curve"] == straight["runs"][0]["robust_curve"]
        exported = load_file(str(workdir / STATE_DICT_FILE))
        reference = load_file(str(tmp_path / "s" / STATE_DICT_FILE))
        for key, value in reference.items():
            np.testing.assert_array_equal(exported[key].numpy(), value.numpy(), err_msg=key)


def test_factory_fields_are_checked_with_their_names(tmp_path):
    import ml_collections

    def build(**fields):
        cfg = ml_collections.ConfigDict(dict(name="torch", **fields))
        return build_model(cfg, (8, 8, 3), 3, seed=0)

    with pytest.raises(ValueError, match=r"'package.module:function'"):
        build(torch_factory="torch_nets.small_net")
    with pytest.raises(ValueError, match=r"cannot import 'no_such_pkg'"):
        build(torch_factory="no_such_pkg:net")
    with pytest.raises(ValueError, match=r"has no 'tiny'"):
        build(torch_factory="torch_nets:tiny")
    with pytest.raises(ValueError, match=r"gives 5 logits, the data needs 3"):
        build(torch_factory="torch_nets:small_net", torch_kwargs=dict(num_classes=5))
    with pytest.raises(FileNotFoundError, match="model.torch_weights"):
        build(torch_factory="torch_nets:small_net", torch_weights=str(tmp_path / "none.pt"))
    # num_classes comes from the data; same seed, same network
    a, pa, _ = build(torch_factory="torch_nets:small_net")
    _, pb, _ = build(torch_factory="torch_nets:small_net")
    jax.tree.map(np.testing.assert_array_equal, pa, pb)
    assert pa["params"]["fc.weight"].get_value().shape == (3, 8)


def test_weights_file_loads_and_a_head_of_another_width_keeps_its_init(tmp_path):
    import ml_collections
    from safetensors.torch import save_file

    torch.manual_seed(1)
    source = __import__("torch_nets").SmallNet(num_classes=5)
    save_file(source.state_dict(), str(tmp_path / "w.safetensors"))
    torch.save(source.state_dict(), str(tmp_path / "w.pt"))
    for name in ("w.safetensors", "w.pt"):
        cfg = ml_collections.ConfigDict(
            dict(name="torch", torch_factory="torch_nets:small_net",
                 torch_weights=str(tmp_path / name))
        )  # fmt: skip
        _, params, stats = build_model(cfg, (8, 8, 3), 3, seed=0)
        conv = params["params"]["conv.weight"].get_value()
        np.testing.assert_array_equal(conv, source.conv.weight.detach().numpy())
        head = params["params"]["fc.weight"].get_value()
        assert head.shape == (3, 8)  # the 5-class head of the file is not forced in
    bad = tmp_path / "bad.safetensors"
    save_file({"conv.weight": source.conv.weight.detach()}, str(bad))
    cfg.torch_weights = str(bad)
    with pytest.raises(ValueError, match=r"does not fit the network: missing \['conv.bias'"):
        build_model(cfg, (8, 8, 3), 3, seed=0)
    with pytest.raises(ConfigError, match="model.torch_factory"):
        setup.make_model(
            ml_collections.ConfigDict(dict(model=dict(name="torch", torch_factory="x"))),
            type("D", (), dict(input_shape=(8, 8, 3), num_classes=3))(),
            0,
        )
