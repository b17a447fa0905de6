"""PyTorch twins of the device check's training steps that ``torch_models.py`` lacks.

* :class:`TorchUNet`: ``arjax.models.UNet`` (nnU-Net-style 2-D U-Net: conv3x3 - affine
  InstanceNorm - LeakyReLU(0.01) blocks, strided-conv downsampling, 2x2/2 transposed
  convolutions), built from an arjax U-Net with its weights copied (NHWC -> NCHW).
* :class:`KhakzarStep`: Khakzar et al. §3.2 FGSM robust optimisation: FGSM (eval mode,
  on the weighted BCE of Eq. 1) on a random half of the batch, then one SGD-momentum step
  on the weighted BCE of the mixed batch (``r = 0``), as ``configs/chestxray14_khakzar.py``
  trains the truncated DenseNet-121.
* :class:`ImaSegmentationStep`: one IMA step on a segmentation U-Net (Ma et al., Alg. 1
  with "Experiments on Segmentation"): clean pass, BPGD in L2 inside each sample's margin
  with "correct" = Dice >= 0.6 (eval mode), then the loss
  ``((1 - beta)(L0 + L1) + beta L2) / B`` on nnU-Net's Dice + CE and one Adam step, as
  ``configs/segmentation_ima.py:ima`` trains (margins updated after the epoch, so the step
  leaves them alone).

The maths follows ``arjax.losses`` / ``arjax.attacks``; the code is what a PyTorch user
writes (eager, batched, ``torch.where`` bookkeeping), so each step does the passes its
arjax twin does.
"""

import torch
import torch.nn.functional as F
import torch_models as tm
from flax import nnx
from torch import nn

NNUNET_SMOOTH = 1e-5


def _instance_norm(norm) -> nn.InstanceNorm2d:
    out = nn.InstanceNorm2d(norm.num_features, eps=norm.epsilon, affine=True)
    out.weight.data, out.bias.data = tm._t(norm.scale[...]), tm._t(norm.bias[...])
    return out


class _Block(nn.Module):
    def __init__(self, block):
        super().__init__()
        self.conv, self.norm = tm._conv(block.conv), _instance_norm(block.norm)
        self.slope = block.negative_slope

    def forward(self, x):
        return F.leaky_relu(self.norm(self.conv(x)), self.slope)


class _UpConv(nn.Module):
    """1x1 convolution to ``4 c`` channels + depth-to-space: ``ConvTranspose2d(k=2, s=2)``."""

    def __init__(self, up):
        super().__init__()
        self.conv = tm._conv(up.conv)
        self.bias = nn.Parameter(tm._t(up.bias[...]))
        self.c = up.c_out

    def forward(self, x):
        b, _, h, w = x.shape
        y = self.conv(x).view(b, 2, 2, self.c, h, w)  # arjax's channel order: (a, b, c)
        y = y.permute(0, 3, 4, 1, 5, 2).reshape(b, self.c, 2 * h, 2 * w)
        return y + self.bias.view(1, -1, 1, 1)


class TorchUNet(nn.Module):
    """``arjax.models.UNet`` (no deep supervision, no input standardisation) in PyTorch."""

    def __init__(self, m):
        super().__init__()
        if m.deep_supervision or m.input_stats is not None:
            raise NotImplementedError("the U-Net twin has no deep supervision or input norm")
        self.encoder = nn.ModuleList([nn.Sequential(*map(_Block, s)) for s in m.encoder])
        self.ups = nn.ModuleList([_UpConv(u) for u in m.ups])
        self.decoder = nn.ModuleList([nn.Sequential(*map(_Block, s)) for s in m.decoder])
        self.head = tm._conv(m.head)

    def forward(self, x):
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        for i, (up, stage) in enumerate(zip(self.ups, self.decoder, strict=True)):
            x = stage(torch.cat([up(x), skips[-2 - i]], 1))
        return self.head(x)


def from_arjax(s) -> nn.Module:
    """The PyTorch twin of a ``workloads.Setup``'s network (``torch_models`` or the U-Net)."""
    from arjax.models.unet import UNet

    module = nnx.merge(s.model.graphdef, s.params, s.stats)
    if isinstance(module, UNet):
        return TorchUNet(module).eval()
    return tm.from_arjax(s)


def weighted_bce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Khakzar et al. Eq. 1 per example, beta = #neg / #pos of the batch (no gradient)."""
    n_pos = y.sum()
    beta = torch.where(n_pos > 0, (y.numel() - n_pos) / n_pos.clamp(min=1.0), 1.0).detach()
    per_class = beta * y * F.logsigmoid(logits) + (1 - y) * F.logsigmoid(-logits)
    return -per_class.sum(-1)


class KhakzarStep:
    """FGSM on a random half of the batch (eval mode), one SGD step on the mixed batch."""

    def __init__(self, net, x, y_multi_hot, eps: float, bounds, lr=0.01, momentum=0.9):
        self.net, self.x, self.y, self.eps, self.bounds = net, x, y_multi_hot, eps, bounds
        self.opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum)

    def __call__(self):
        net, x, y = self.net, self.x, self.y
        idx = torch.randperm(x.shape[0], device=x.device)[: x.shape[0] // 2]
        net.eval()
        sub = x[idx].detach().requires_grad_(True)
        (g,) = torch.autograd.grad(weighted_bce(net(sub), y[idx]).sum(), sub)
        x_adv = x.clone()
        x_adv[idx] = tm._clip(sub.detach() + self.eps * g.sign(), self.bounds)
        net.train()
        with torch.no_grad():
            accuracy = ((net(x) > 0) == (y > 0)).all(-1).float().mean()  # arjax's metric pass
        loss = weighted_bce(net(x_adv), y).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        net.eval()
        return loss.detach(), accuracy


def _one_hot(y: torch.Tensor, classes: int) -> torch.Tensor:
    return F.one_hot(y, classes).permute(0, 3, 1, 2).float()  # [B, C, H, W]


def dice_ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """nnU-Net's loss per example: pixel-mean CE + 1 - mean soft Dice (foreground)."""
    ce = F.cross_entropy(logits, y, reduction="none").flatten(1).mean(1)
    p = logits.softmax(1)[:, 1:].flatten(2)
    t = _one_hot(y, logits.shape[1])[:, 1:].flatten(2)
    dice = (2 * (p * t).sum(2) + NNUNET_SMOOTH) / (p.sum(2) + t.sum(2) + NNUNET_SMOOTH)
    return ce + 1 - dice.mean(1)


def dice_correct(logits: torch.Tensor, y: torch.Tensor, threshold: float) -> torch.Tensor:
    """Hard Dice of the argmax over the foreground classes >= ``threshold`` (empty: 1)."""
    c = logits.shape[1]
    p = _one_hot(logits.argmax(1), c)[:, 1:].flatten(2).bool()
    t = _one_hot(y, c)[:, 1:].flatten(2).bool()
    tp, fp, fn = (p & t).sum(2), (p & ~t).sum(2), (~p & t).sum(2)
    denom = 2 * tp + fp + fn
    dice = torch.where(denom > 0, 2 * tp / denom.clamp(min=1), 1.0)
    return dice.mean(1) >= threshold


def _l2_normalise(g: torch.Tensor) -> torch.Tensor:
    return g / g.flatten(1).norm(dim=1).clamp(min=1e-12).view(-1, *([1] * (g.dim() - 1)))


def _l2_project(delta: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """``delta`` scaled into the L2 balls of radii ``eps [B]``."""
    norm = delta.flatten(1).norm(dim=1).clamp(min=1e-12)
    return delta * torch.clamp(eps / norm, max=1.0).view(-1, *([1] * (delta.dim() - 1)))


def segmentation_bpgd(net, x, y, eps, steps, bisections, alpha, bounds, threshold, clean_ok):
    """BPGD in L2 with Dice-correctness (arjax's default bracket: clean to last wrong).

    Returns ``(images, crossed)``: boundary points and whether each sample's search
    found a "wrong" (Dice < threshold) iterate.
    """
    step = alpha * eps / steps
    with torch.no_grad():
        noise = _l2_project(torch.randn_like(x), eps * torch.rand_like(eps))
        delta = torch.where(tm._rows(clean_ok, x), tm._clip(x + noise, bounds) - x, 0.0)
    crossed, last_wrong = ~clean_ok, torch.zeros_like(x)
    for _ in range(steps):
        x_adv = (x + delta).requires_grad_(True)
        logits = net(x_adv)
        loss = F.cross_entropy(logits, y, reduction="none").flatten(1).mean(1).sum()
        (g,) = torch.autograd.grad(loss, x_adv)
        with torch.no_grad():
            wrong = ~dice_correct(logits, y, threshold)
            last_wrong = torch.where(tm._rows(wrong, x), delta, last_wrong)
            crossed |= wrong
            stepped = _l2_project(delta + tm._rows(step, x) * _l2_normalise(g), eps)
            delta = tm._clip(x + stepped, bounds) - x
    with torch.no_grad():
        wrong = ~dice_correct(net(x + delta), y, threshold)
        last_wrong = torch.where(tm._rows(wrong, x), delta, last_wrong)
        crossed |= wrong
        lo, hi = torch.zeros_like(x), last_wrong
        for _ in range(bisections):
            mid = 0.5 * (lo + hi)
            ok = tm._rows(dice_correct(net(x + mid), y, threshold), x)
            lo, hi = torch.where(ok, mid, lo), torch.where(ok, hi, mid)
        images = torch.where(tm._rows(crossed & clean_ok, x), x + 0.5 * (lo + hi), x)
    return images, crossed


class ImaSegmentationStep:
    """One IMA step on a segmentation net (Alg. 1; BPGD 20 + 10 in L2; Adam 1e-3)."""

    def __init__(
        self,
        net,
        x,
        y,
        margins,
        *,
        steps,
        bisections,
        alpha=4.0,
        beta=0.5,
        threshold=0.6,
        bounds=(0.0, 1.0),
    ):
        self.net, self.x, self.y, self.margins = net, x, y, margins
        self.steps, self.bisections, self.alpha, self.beta = steps, bisections, alpha, beta
        self.threshold, self.bounds = threshold, bounds
        self.opt = torch.optim.Adam(net.parameters(), lr=1e-3)

    def __call__(self):
        net, x, y = self.net, self.x, self.y
        net.train()
        logits = net(x)
        correct = dice_correct(logits.detach(), y, self.threshold)
        net.eval()  # attacks in eval mode (arjax's default)
        images, crossed = segmentation_bpgd(
            net,
            x,
            y,
            self.margins,
            self.steps,
            self.bisections,
            self.alpha,
            self.bounds,
            self.threshold,
            correct,
        )
        net.train()
        loss = dice_ce(logits, y)
        l01 = loss.sum()
        l2 = torch.where(correct & crossed, dice_ce(net(images), y), 0.0).sum()
        value = ((1 - self.beta) * l01 + self.beta * l2) / x.shape[0]
        self.opt.zero_grad(set_to_none=True)
        value.backward()
        self.opt.step()
        net.eval()
        return value.detach()
