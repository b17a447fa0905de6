"""PyTorch twins of arjax's benchmark models, and the PyTorch attacks and train step.

``from_arjax(setup)`` builds the PyTorch network of an arjax model and copies its weights
(NHWC/HWIO -> NCHW/OIHW), so both frameworks compute the same function. The attacks are
written the way a PyTorch user would (eager, batched, ``torch.where`` bookkeeping), with
the same maths as ``arjax.attacks``:

* ``pgd``: linf PGD with a uniform random start, step ``step_size * sign(grad)``,
  projection onto the ball and the bounds (what ``torchattacks.PGD`` does);
* ``bpgd``: IMA's BPGD (Ma et al., Alg. 3) with per-sample radii: PGD that freezes each
  sample at its first misclassified iterate and remembers the iterate before it, then
  bisection between the two.
"""

from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F
from flax import nnx
from torch import nn

from arjax.models.cnn import ImaCNN
from arjax.models.mlp import MLP

ACTIVATIONS = {"relu": F.relu, "leaky_relu": F.leaky_relu, "gelu": F.gelu, "tanh": torch.tanh}


def _t(array) -> torch.Tensor:
    return torch.from_numpy(np.array(array, np.float32, order="C"))


def _linear(layer: nnx.Linear) -> nn.Linear:
    out = nn.Linear(layer.in_features, layer.out_features)
    out.weight.data = _t(np.asarray(layer.kernel[...]).T)
    out.bias.data = _t(layer.bias[...])
    return out


def _layer_norm(norm) -> nn.LayerNorm:
    out = nn.LayerNorm(norm.num_features, eps=norm.epsilon)
    out.weight.data, out.bias.data = _t(norm.scale[...]), _t(norm.bias[...])
    return out


def _conv(conv) -> nn.Conv2d:
    out = nn.Conv2d(
        conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
        bias=conv.bias is not None,
    )  # fmt: skip
    out.weight.data = _t(np.asarray(conv.kernel[...]).transpose(3, 2, 0, 1))
    if conv.bias is not None:
        out.bias.data = _t(conv.bias[...])
    return out


class TorchMLP(nn.Module):
    """``arjax.models.MLP``: ``Linear -> [LayerNorm] -> activation`` per hidden layer."""

    def __init__(self, m: MLP):
        super().__init__()
        self.hidden = nn.ModuleList([_linear(layer) for layer in m.hidden])
        self.norms = nn.ModuleList(
            [nn.Identity() if n is None else _layer_norm(n) for n in m.norms]
        )
        self.head = _linear(m.head)
        self.act = ACTIVATIONS[m.activation]
        self.single = m.num_outputs == 1

    def forward(self, x):
        h = x.flatten(1)
        for layer, norm in zip(self.hidden, self.norms, strict=True):
            h = self.act(norm(layer(h)))
        out = self.head(h)
        return out[:, 0] if self.single else out


class TorchImaCNN(nn.Module):
    """``arjax.models.ImaCNN``: ``[Conv-[IN]-LR]* - Conv - Flatten - LN - LR - Linear``."""

    def __init__(self, m: ImaCNN):
        super().__init__()
        self.convs = nn.ModuleList([_conv(c) for c in m.convs])
        self.norms = nn.ModuleList(
            [nn.Identity() if n is None else nn.InstanceNorm2d(n.num_features) for n in m.norms]
        )
        self.feature_norm = _layer_norm(m.feature_norm)
        self.head = _linear(m.head)
        self.slope = m.negative_slope

    def forward(self, x):
        h = x
        for conv, norm in zip(self.convs[:-1], self.norms, strict=True):
            h = F.leaky_relu(norm(conv(h)), self.slope)
        h = self.convs[-1](h).permute(0, 2, 3, 1).flatten(1)  # arjax flattens NHWC
        return self.head(F.leaky_relu(self.feature_norm(h), self.slope))


class _Standardize(nn.Module):
    """``(x - mean) / std`` per channel (the arjax models standardise inside)."""

    def __init__(self, stats):
        super().__init__()
        mean, std = stats if stats is not None else ((0.0,), (1.0,))
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x):
        return (x - self.mean) / self.std


def _norm2d(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    return nn.GroupNorm(channels, channels, eps=1e-5)  # IMA's instance norm with affine


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, planes: int, stride: int, norm: str):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = _norm2d(norm, planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = _norm2d(norm, planes)
        self.downsample = None
        if stride != 1 or cin != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, planes, 1, stride, bias=False), _norm2d(norm, planes)
            )

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class TorchResNet18(nn.Module):
    """torchvision's ResNet-18 layout (BasicBlocks), input standardisation first."""

    def __init__(self, m):
        super().__init__()
        if [len(m.layer1), m.num_features] != [2, 512] or len(m.layer4) != 2:
            raise NotImplementedError("only ResNet-18 has a PyTorch twin here")
        norm = "batch" if isinstance(m.bn1, nnx.BatchNorm) else "instance"
        self.standardize = _Standardize(m.input_stats)
        self.conv1 = nn.Conv2d(m.conv1.in_channels, 64, 7, 2, 3, bias=False)
        self.bn1 = _norm2d(norm, 64)
        cin = 64
        for stage, planes in enumerate((64, 128, 256, 512)):
            first = _BasicBlock(cin, planes, 2 if stage else 1, norm)
            setattr(
                self,
                f"layer{stage + 1}",
                nn.Sequential(first, _BasicBlock(planes, planes, 1, norm)),
            )
            cin = planes
        self.fc = nn.Linear(512, m.num_outputs)
        self.single = m.num_outputs == 1
        _load(self, export_torchvision(m))

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(self.standardize(x))))
        h = F.max_pool2d(h, 3, 2, 1)
        h = self.layer4(self.layer3(self.layer2(self.layer1(h))))
        out = self.fc(h.mean((2, 3)))
        return out[:, 0] if self.single else out


class _DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int, bn_size: int):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, bn_size * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth)
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, 1, 1, bias=False)

    def forward(self, x):
        h = self.conv1(F.relu(self.norm1(x)))
        return torch.cat([x, self.conv2(F.relu(self.norm2(h)))], 1)


class _Transition(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(cin)
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x):
        return F.avg_pool2d(self.conv(F.relu(self.norm(x))), 2, 2)


class TorchDenseNet(nn.Module):
    """torchvision's DenseNet layout (growth 32, bn_size 4), any number of dense blocks."""

    def __init__(self, m):
        super().__init__()
        self.standardize = _Standardize(m.input_stats)
        f = m.features
        c = f["conv0"].out_channels
        layers = {
            "conv0": nn.Conv2d(f["conv0"].in_channels, c, 7, 2, 3, bias=False),
            "norm0": nn.BatchNorm2d(c),
        }
        for i in range(1, m.num_blocks + 1):
            block = f[f"denseblock{i}"]
            growth = block.denselayer1.conv2.out_channels
            dense = [_DenseLayer(c + j * growth, growth, 4) for j in range(block.num_layers)]
            layers[f"denseblock{i}"] = nn.Sequential(
                OrderedDict((f"denselayer{j + 1}", d) for j, d in enumerate(dense))
            )
            c += block.num_layers * growth
            if i < m.num_blocks:
                layers[f"transition{i}"] = _Transition(c, c // 2)
                c //= 2
        layers["norm5"] = nn.BatchNorm2d(c)
        self.features = nn.ModuleDict(layers)
        self.classifier = nn.Linear(c, m.num_outputs)
        self.single = m.num_outputs == 1
        renames = {v: k for k, v in getattr(m, "torchvision_renames", {}).items()}
        _load(self, export_torchvision(m), renames)

    def forward(self, x):
        f = self.features
        h = F.relu(f["norm0"](f["conv0"](self.standardize(x))))
        h = F.max_pool2d(h, 3, 2, 1)
        for name, layer in f.items():
            if name.startswith(("denseblock", "transition")):
                h = layer(h)
        out = self.classifier(F.relu(f["norm5"](h)).mean((2, 3)))
        return out[:, 0] if self.single else out


def _load(net: nn.Module, state: dict, renames: dict[str, str] | None = None) -> None:
    """Loads an ``export_torchvision`` state dict (strict), renaming module prefixes."""
    out = {}
    for name, value in state.items():
        for old, new in (renames or {}).items():
            if name.startswith(old + "."):
                name = new + name[len(old) :]
        out[name] = torch.from_numpy(np.array(value))
    net.load_state_dict(out, strict=True)


def from_arjax(s) -> nn.Module:
    """The PyTorch network of a ``workloads.Setup``, holding the same weights (eval mode)."""
    module = nnx.merge(s.model.graphdef, s.params, s.stats)
    for cls, twin in TWINS.items():
        if isinstance(module, cls):
            return twin(module).eval()
    raise NotImplementedError(f"no PyTorch twin for {type(module).__name__}")


def supported(names: list[str]) -> list[str]:
    """The benchmark models that have a PyTorch twin."""
    return [n for n in names if n in SUPPORTED]


def forward(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Logits without autograd."""
    with torch.no_grad():
        return net(x)


def input_grad(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Gradient of the summed cross-entropy w.r.t. the input."""
    x = x.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(net(x), y, reduction="sum"), x)
    return g


def _clip(x, bounds):
    return x if bounds is None else x.clamp(*bounds)


def _rows(mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return mask.view(-1, *([1] * (x.dim() - 1)))


def pgd(net, x, y, eps: float, step_size: float, steps: int, bounds) -> torch.Tensor:
    """Linf PGD with a random start (Madry et al.), as a PyTorch user writes it."""
    delta = torch.empty_like(x).uniform_(-eps, eps)
    x_adv = _clip(x + delta, bounds).detach()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(net(x_adv), y, reduction="sum"), x_adv)
        with torch.no_grad():
            x_adv = x_adv + step_size * g.sign()
            x_adv = _clip(x + (x_adv - x).clamp(-eps, eps), bounds)
    return x_adv.detach()


def bpgd(net, x, y, eps: torch.Tensor, steps: int, bisections: int, alpha: float, bounds):
    """IMA's BPGD (Alg. 3) with per-sample radii ``eps [B]``: recorded bracket, bisection.

    Returns ``(images, crossed)``; the same algorithm as ``arjax.attacks.bpgd``.
    """
    e = _rows(eps, x)
    step = alpha * e / steps
    with torch.no_grad():
        clean_wrong = net(x).argmax(1) != y
        delta = _clip(x + (2 * torch.rand_like(x) - 1) * e, bounds) - x
        delta = torch.where(_rows(clean_wrong, x), torch.zeros_like(x), delta)
    prev, crossed = torch.zeros_like(x), clean_wrong.clone()
    for _ in range(steps):
        x_adv = (x + delta).requires_grad_(True)
        logits = net(x_adv)
        (g,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), x_adv)
        with torch.no_grad():
            crossed |= logits.argmax(1) != y
            stepped = (delta + step * g.sign()).clamp(-e, e)
            stepped = _clip(x + stepped, bounds) - x
            frozen = _rows(crossed, x)
            delta, prev = torch.where(frozen, delta, stepped), torch.where(frozen, prev, delta)
    with torch.no_grad():
        crossed |= net(x + delta).argmax(1) != y
        lo, hi = prev, delta
        for _ in range(bisections):
            mid = 0.5 * (lo + hi)
            correct = _rows(net(x + mid).argmax(1) == y, x)
            lo, hi = torch.where(correct, mid, lo), torch.where(correct, hi, mid)
        images = torch.where(_rows(crossed, x), x + 0.5 * (lo + hi), x)
    return images, crossed


class TrainStep:
    """One Adam step (lr 1e-3): CE, or ``(CE(x) + CE(x_adv)) / 2`` with PGD-k (alpha 4)."""

    def __init__(self, net, x, y, eps: float, pgd_steps: int, bounds):
        self.net, self.x, self.y, self.eps = net, x, y, eps
        self.pgd_steps, self.bounds = pgd_steps, bounds
        self.opt = torch.optim.Adam(net.parameters(), lr=1e-3)

    def __call__(self):
        net, x, y = self.net, self.x, self.y
        if self.pgd_steps:
            net.eval()  # attacks use running statistics, as arjax's do
            k = self.pgd_steps
            x_adv = pgd(net, x, y, self.eps, 4 * self.eps / k, k, self.bounds)
        net.train()
        loss = F.cross_entropy(net(x), y)
        if self.pgd_steps:
            loss = 0.5 * loss + 0.5 * F.cross_entropy(net(x_adv), y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        net.eval()
        return loss.detach()


TWINS = {MLP: TorchMLP, ImaCNN: TorchImaCNN}
SUPPORTED = ["moons_mlp", "fmnist_cnn", "svhn_cnn"]
try:  # registered by arjax.models when present
    from arjax.models.densenet import DenseNet
    from arjax.models.pretrained import export_torchvision
    from arjax.models.resnet import ResNet

    TWINS.update({ResNet: TorchResNet18, DenseNet: TorchDenseNet})
    SUPPORTED += ["resnet18", "densenet121_truncated"]
except ImportError:
    pass
