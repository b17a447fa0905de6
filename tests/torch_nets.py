"""PyTorch networks for the torch-bridge tests (``arjax.models.from_torch``).

``resnet18`` builds torchvision's ResNet-18 when torchvision imports, and otherwise the
same architecture written here in plain torch (``PlainResNet18``: the same layers, state
dict keys and initialisation rules as torchvision's, He et al. 2016, Table 1). PyPI's
torchvision wheels are CUDA builds whose operators do not load beside the CPU torch wheel
CI installs, so CI exercises the plain one; a machine with a matching torchvision tests
the real one through the same factory string.
"""

import importlib

import torch
from torch import nn


def torchvision_or_none():
    """torchvision's ``models`` package when it imports, else None."""
    try:
        return importlib.import_module("torchvision.models")
    except Exception:  # ImportError, or RuntimeError "operator torchvision::nms does not exist"
        return None


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and an identity (or 1x1 projection) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        shortcut = x if self.downsample is None else self.downsample(x)
        h = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(h)) + shortcut)


class PlainResNet18(nn.Module):
    """ResNet-18 for ImageNet-style inputs ``[B, 3, H, W]``: 7x7/2 stem, max pool, 4 stages."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        widths, cin = (64, 128, 256, 512), 64
        for i, width in enumerate(widths, 1):
            stride = 1 if i == 1 else 2
            stage = nn.Sequential(BasicBlock(cin, width, stride), BasicBlock(width, width, 1))
            setattr(self, f"layer{i}", stage)
            cin = width
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        h = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        h = self.layer4(self.layer3(self.layer2(self.layer1(h))))
        return self.fc(torch.flatten(self.avgpool(h), 1))


def resnet18(num_classes: int = 1000) -> nn.Module:
    """torchvision's ``resnet18(num_classes=...)``, or :class:`PlainResNet18` without it."""
    tv = torchvision_or_none()
    return tv.resnet18(num_classes=num_classes) if tv else PlainResNet18(num_classes)


RESNET18_FACTORY = "torch_nets:resnet18"  # importable with tests/ on sys.path


class SmallNet(nn.Module):
    """A user's custom module: conv -> BatchNorm -> ReLU -> GAP -> Dropout -> Linear."""

    def __init__(self, num_classes: int = 3, dropout: float = 0.5, width: int = 8):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.act = nn.ReLU()
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        h = self.act(self.bn(self.conv(x)))
        return self.fc(self.drop(h.mean((2, 3))))


def small_net(num_classes: int = 3, dropout: float = 0.5) -> nn.Module:
    """Factory of :class:`SmallNet` (``model.torch_factory="torch_nets:small_net"``)."""
    return SmallNet(num_classes, dropout)
