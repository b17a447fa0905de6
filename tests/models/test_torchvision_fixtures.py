"""torchvision weight import checked against torchvision itself, without PyTorch installed.

``tests/fixtures/make_torch_fixtures.py`` (run once with torch + torchvision)
stored the state dicts of narrow torchvision networks (torchvision's classes at
reduced widths: every name and layer rule is torchvision's), their eval-mode
logits and features on a fixed input, and the names and shapes of the
full-size ``resnet18``, ``resnet50``, ``vgg16``, ``vgg16_bn`` and
``densenet121`` state dicts. Here arjax imports those files and must
reproduce torchvision's numbers, Khakzar's truncated DenseNet included
(``tests/models/test_pretrained.py`` holds the checks that need PyTorch itself:
full-width forward passes, ``.pth`` files).
"""

import json
from pathlib import Path

import jax
import numpy as np
import pytest

from arjax.models import load_pretrained, load_state_dict, split_model
from arjax.models import pretrained as pretrained_lib
from arjax.models.densenet import DenseNet, TruncatedDenseNet
from arjax.models.pretrained import abstract_module, torchvision_init
from arjax.models.resnet import ResNet
from arjax.models.vgg import VGG, adaptive_pool_matrix

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
WIDTHS = (4, 8, 16, 32)  # make_torch_fixtures.RESNET_WIDTHS
VGG_NARROW = (4, 4, "M", 8, 8, "M", 8, 8, 8, "M", 16, 16, 16, "M", 16, 16, 16, "M")

# fixture net -> the arjax model of the same architecture (abstract: the import fills it)
NARROW = {
    "resnet18_narrow": lambda r: ResNet(
        "basic", (2, 2, 2, 2), 5, input_norm="none", widths=WIDTHS, rngs=r
    ),
    "resnet50_narrow_instance": lambda r: ResNet(
        "bottleneck", (1, 1, 1, 1), 5, norm="instance", input_norm="none", widths=WIDTHS, rngs=r
    ),
    "densenet_narrow": lambda r: DenseNet(
        (2, 3, 2), 5, growth=4, num_init_features=8, bn_size=2, input_norm="none", rngs=r
    ),
    "vgg16_narrow": lambda r: VGG(VGG_NARROW, 5, hidden=8, input_norm="none", rngs=r),
    "vgg16_bn_narrow": lambda r: VGG(
        VGG_NARROW, 5, hidden=8, input_norm="none", batch_norm=True, rngs=r
    ),
}
# torchvision architecture -> arjax's full-size model (abstract: only names and shapes)
FULL_SIZE = {
    "resnet18": lambda r: ResNet("basic", (2, 2, 2, 2), rngs=r),
    "resnet50": lambda r: ResNet("bottleneck", (3, 4, 6, 3), rngs=r),
    "vgg16": lambda r: VGG(rngs=r),
    "vgg16_bn": lambda r: VGG(batch_norm=True, rngs=r),
    "densenet121": lambda r: DenseNet(rngs=r),
}


@pytest.fixture(scope="module")
def reference():
    with np.load(FIXTURES / "torch_reference.npz") as f:
        return dict(f)


def _close(ours, ref):
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * float(np.abs(ref).max()))


@pytest.mark.parametrize("name", sorted(NARROW))
def test_imported_net_reproduces_torchvision(name, reference):
    path = FIXTURES / f"{name}.safetensors"
    model = abstract_module(NARROW[name])
    report = load_pretrained(model, path, head="load")
    file_names = set(load_state_dict(path))
    assert set(report.loaded) | set(report.dropped) == file_names and not report.skipped_head
    fns, params, stats = split_model(model)
    logits, features, _ = jax.jit(fns.apply)(params, stats, reference["x"])
    want = reference[f"{name}/logits"]
    assert want.shape == (2, 5) and np.ptp(want) > 1e-3  # a non-degenerate reference
    _close(np.asarray(features), reference[f"{name}/features"])
    _close(np.asarray(logits), want)


class _NarrowTruncatedDenseNet(DenseNet):
    """Khakzar's truncation (blocks after the second removed) of the narrow fixture DenseNet."""

    torchvision_renames = TruncatedDenseNet.torchvision_renames
    torchvision_dropped = TruncatedDenseNet.torchvision_dropped


def test_truncated_densenet_ends_with_torchvision_transition2_norm(reference):
    model = abstract_module(
        lambda r: _NarrowTruncatedDenseNet(
            (2, 3), 5, growth=4, num_init_features=8, bn_size=2, input_norm="none", rngs=r
        )
    )
    torchvision_init(model, 0, conv_mode="fan_in")  # the head is not in the file: it keeps these
    report = load_pretrained(model, FIXTURES / "densenet_narrow.safetensors")
    assert "features.denseblock3.denselayer1.conv1.weight" in report.dropped
    assert set(report.skipped_head) == {"classifier.weight", "classifier.bias"}  # 18 vs 20 wide
    fns, params, stats = split_model(model)
    _, features, _ = jax.jit(fns.apply)(params, stats, reference["x"])
    want = reference["densenet_narrow/transition2_features"]
    assert want.shape == (2, 8, 8, 20)
    _close(np.asarray(features), want)


def test_a_layout_error_would_be_caught(reference):
    """The comparison has teeth: one kernel imported without its OIHW -> HWIO transpose."""
    name = "resnet18_narrow"
    state = load_state_dict(FIXTURES / f"{name}.safetensors")
    kernel = state["layer3.1.conv2.weight"]  # [16, 16, 3, 3]
    state["layer3.1.conv2.weight"] = np.ascontiguousarray(kernel.transpose(1, 0, 2, 3))
    model = abstract_module(NARROW[name])
    pretrained_lib.import_torchvision(model, state, head="load")
    fns, params, stats = split_model(model)
    logits, _, _ = jax.jit(fns.apply)(params, stats, reference["x"])
    with pytest.raises(AssertionError):
        _close(np.asarray(logits), reference[f"{name}/logits"])


def _export_shapes(model) -> dict[str, list[int]]:
    """``{name: shape}`` that ``export_torchvision(model)`` writes, read without values."""
    entries, batch_norms, _ = pretrained_lib._entries(model)
    shapes = {}
    for e in entries:
        shape = tuple(e.variable.shape)
        order = pretrained_lib._PERMUTATIONS.get(e.kind, (None, tuple(range(len(shape)))))[1]
        shapes[e.name] = [shape[i] for i in order]
    shapes.update({f"{p}.num_batches_tracked": [] for p in batch_norms})
    return shapes


@pytest.mark.parametrize("arch", sorted(FULL_SIZE))
def test_names_and_shapes_are_torchvision_s(arch):
    with open(FIXTURES / "torchvision_names.json") as f:
        want = json.load(f)[arch]
    got = _export_shapes(abstract_module(FULL_SIZE[arch]))
    assert sorted(set(want) - set(got)) == [] and sorted(set(got) - set(want)) == []
    assert {k: v for k, v in got.items() if v != want[k]} == {}


@pytest.mark.parametrize("size", [1, 5, 7, 10, 14, 23])
def test_adaptive_pool_matrix_matches_torch(size, reference):
    grid = reference[f"pool_input/{size}"]
    p = adaptive_pool_matrix(size, 7)
    np.testing.assert_allclose(p @ grid @ p.T, reference[f"pool/{size}"], rtol=1e-5, atol=1e-6)


def test_fixtures_stay_small():
    sizes = {p.name: p.stat().st_size for p in FIXTURES.iterdir() if p.is_file()}
    assert {f"{n}.safetensors" for n in NARROW} | {"torch_reference.npz"} <= set(sizes)
    assert sum(sizes.values()) < 1_000_000, sizes


def test_resnet_widths_need_four_stages():
    with pytest.raises(ValueError, match="4 stages"):
        abstract_module(lambda r: ResNet("basic", (2, 2, 2, 2), widths=(4, 8, 16), rngs=r))
