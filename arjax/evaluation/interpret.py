"""Interpretability maps: vanilla-gradient saliency and class activation maps (CAMs).

Khakzar et al. (seed 002) measure interpretability with

* **saliency maps** (§4.2, Fig. 1 and 4): "vanilla saliency maps [Simonyan et
  al., 2013], the gradients are only clipped by three standard deviations and
  scaled to [0 1] and no further processing (e.g. smoothing) is performed";
* **class activation maps** (Zhou et al., 2016): for a network whose logits
  are a linear head on the global average of the last feature map
  ``f [h, w, C]``, ``logit_k = b_k + mean_ij sum_c W[c, k] f[i, j, c]``, and
  ``CAM_k[i, j] = sum_c W[c, k] f[i, j, c]``: the head applied at every
  position, without the bias, so ``mean_ij CAM_k + b_k = logit_k``. For
  localisation (§3.3) a CAM is bilinearly upsampled to the input size and
  scaled to ``[0, 255]`` (``upsample_cam``), then thresholded
  (``arjax.evaluation.localization``).

Any attribution map can replace the CAM in that protocol: methods register a function
giving one map per image and class (``register_attribution``; ``"cam"`` here, Grad-CAM,
Grad-CAM++, SmoothGrad, integrated gradients and occlusion in
``arjax.evaluation.attribution``), and ``localization_map`` upsamples and scales any of
them exactly as a CAM.

``save_grid`` writes the Fig. 1-style PNG: input, CAM overlay and saliency (and any other
maps), each with the ground-truth boxes drawn.
"""

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from matplotlib.patches import Rectangle

from arjax import compilation
from arjax.evaluation.attribution import AttributionDef, attribution_map, register_attribution
from arjax.evaluation.boxes import box_data, box_list, cam_channels
from arjax.evaluation.report import PathLike, _save, subplots
from arjax.losses import classification_loss
from arjax.models.densenet import DenseNet
from arjax.models.functional import ModelFns
from arjax.models.resnet import ResNet
from arjax.types import Array, PRNGKey, PyTree

# Networks whose logits are ``head(mean_ij features)``: class -> name of the head attribute.
# A module may also declare its own ``cam_head`` attribute (see arjax.models.camnet).
GAP_HEADS: dict[type, str] = {ResNet: "fc", DenseNet: "classifier"}


def saliency(
    fn: Callable[[Array], Array],
    x: Array,
    y: Array | None = None,
    *,
    num_std: float = 3.0,
    signed: bool = False,
) -> Array:
    """Vanilla-gradient saliency maps, clipped at ``num_std`` standard deviations, in [0, 1].

    Khakzar et al. §4.2 (after Simonyan et al., 2013, §3.1). Per image:

    1. ``g = d loss / d x`` (the gradient of that image's own loss);
    2. one value per pixel: ``max_c |g_c|`` (Simonyan's map), or with
       ``signed=True`` the signed ``sum_c g_c``;
    3. clip to ``mean +- num_std * std`` of the image's map;
    4. scale to [0, 1] by the image's min and max (a constant map gives 0).

    Args:
      fn: with ``y``: a logits function ``x -> logits`` and the loss is
        ``arjax.losses.classification_loss(logits, y)`` (softmax CE, binary or
        multi-label BCE). Without ``y``: any per-example scalar ``x -> [B]``
        (a loss, or one logit) whose gradient is taken. Examples must not
        interact (eval-mode batch statistics), as the gradient of the batch sum
        is used. The gradient is compiled on each call (``fn`` is a new closure
        each time); use ``model_saliency`` (or your own ``jax.jit``) to reuse it.
      x: float ``[B, H, W, C]`` (or ``[B, H, W]``) inputs.
      y: labels for the loss (int ``[B]`` or multi-hot ``[B, K]``), or None.
      num_std: clipping width in standard deviations (3 in the paper).
      signed: keep the gradient's sign (``sum_c g_c``) instead of ``max_c |g_c|``.

    Returns:
      float32 ``[B, H, W]`` in ``[0, 1]``.
    """
    x = jnp.asarray(x, jnp.float32)
    if x.ndim not in (3, 4):
        raise ValueError(f"saliency needs inputs [B, H, W] or [B, H, W, C], got {x.shape}")
    if y is None:
        per_example = fn
    else:

        def per_example(images):
            return classification_loss(fn(images), y)

    def total(images):
        values = per_example(images)
        if values.shape != (x.shape[0],):
            raise ValueError(
                f"saliency: the function must give one value per example [B={x.shape[0]}], "
                f"got {values.shape}"
            )
        return jnp.sum(values)

    # One compilation, not op-by-op; inlined under an outer jit.
    g = compilation.jit(jax.grad(total))(x)
    if g.ndim == 4:
        g = g.sum(-1) if signed else jnp.abs(g).max(-1)
    elif not signed:
        g = jnp.abs(g)
    return clip_and_scale(g, num_std)


@functools.partial(compilation.jit, static_argnames=("model", "num_std", "signed"))
def model_saliency(
    model: ModelFns,
    params: PyTree,
    batch_stats: PyTree,
    x: Array,
    y: Array,
    *,
    num_std: float = 3.0,
    signed: bool = False,
) -> Array:
    """``saliency`` of a model's loss (eval-mode statistics), compiled once per input shape.

    Args:
      model: the model's pure functions.
      params: parameters.
      batch_stats: batch statistics.
      x: float ``[B, H, W, C]`` images.
      y: labels (int ``[B]`` or multi-hot ``[B, K]``).
      num_std: clipping width in standard deviations.
      signed: see ``saliency``.

    Returns:
      float32 ``[B, H, W]`` in ``[0, 1]``.
    """
    return saliency(model.logits_fn(params, batch_stats), x, y, num_std=num_std, signed=signed)


@compilation.jit
def clip_and_scale(maps: Array, num_std: float = 3.0) -> Array:
    """Clips each ``[H, W]`` map to its ``mean +- num_std * std`` and min-max scales it to [0, 1].

    Args:
      maps: float ``[B, H, W]``.
      num_std: clipping width in standard deviations.

    Returns:
      float32 ``[B, H, W]`` in ``[0, 1]``; constant maps give zeros.
    """
    maps = jnp.asarray(maps, jnp.float32)
    mean = maps.mean(axis=(1, 2), keepdims=True)
    std = maps.std(axis=(1, 2), keepdims=True)
    clipped = jnp.clip(maps, mean - num_std * std, mean + num_std * std)
    return _minmax(clipped, axes=(1, 2), high=1.0)


def _minmax(maps: Array, axes: tuple[int, ...], high: float) -> Array:
    lo = maps.min(axis=axes, keepdims=True)
    span = maps.max(axis=axes, keepdims=True) - lo
    return jnp.where(span > 0, (maps - lo) / jnp.where(span > 0, span, 1.0), 0.0) * high


def cam_head(module: nnx.Module) -> nnx.Linear:
    """The linear head a CAM uses: ``module.cam_head`` or ``GAP_HEADS[type(module)]``.

    Raises:
      ValueError: for networks whose logits are not a linear head on the global
        average of ``features`` (VGG16's MLP head, the IMA CNNs' flatten head,
        MLPs), naming the networks that have one.
    """
    name = getattr(module, "cam_head", None)
    for cls, attr in GAP_HEADS.items():
        if name is None and isinstance(module, cls):
            name = attr
    head = getattr(module, name, None) if name else None
    if not isinstance(head, nnx.Linear):
        raise ValueError(
            f"CAM needs global average pooling + a linear head; {type(module).__name__} has "
            "none. Networks with one: resnet18, resnet50, densenet121, densenet121_truncated, "
            "cam_cnn (or a module whose `cam_head` attribute names its nnx.Linear head)"
        )
    return head


def cam_kernel(module: nnx.Module) -> Array:
    """The CAM weights ``[C, K]``: ``module.cam_kernel()`` if it has one, else its head's kernel.

    A module that is no NNX network inside (a PyTorch model, ``arjax.models.from_torch``)
    defines ``cam_kernel()``; the others are read through :func:`cam_head`.

    Raises:
      ValueError: the network has no GAP + linear head.
    """
    if hasattr(module, "cam_kernel"):
        return module.cam_kernel()
    return cam_head(module).kernel[...]


@functools.partial(compilation.jit, static_argnums=0)
def _cams(model: ModelFns, params: PyTree, batch_stats: PyTree, x: Array) -> tuple[Array, Array]:
    logits, features, _ = model.apply(params, batch_stats, x, train=False)
    if features is None:
        raise ValueError(
            "class activation maps need the model's last convolutional feature map, but the "
            "model returns plain logits: return (logits, feature_map) from it"
        )
    kernel = cam_kernel(nnx.merge(model.graphdef, params, batch_stats, copy=True))
    cams = jnp.einsum("bhwc,ck->bhwk", features, kernel.astype(features.dtype))
    return cams, logits


def class_activation_maps(
    model: ModelFns, params: PyTree, batch_stats: PyTree, x: Array, *, with_logits: bool = False
) -> Array | tuple[Array, Array]:
    """Class activation maps of a GAP + linear network (Zhou et al., 2016, Eq. 2).

    ``CAM_k[i, j] = sum_c W[c, k] * features[i, j, c]`` with ``W`` the head's
    kernel ``[C, K]``; the head's bias is left out, so ``CAM_k.mean((1, 2)) +
    b_k == logit_k``. A single-logit binary head gives ``K = 1`` (the CAM of
    the positive class). Eval-mode batch statistics; jitted once per input shape.

    Args:
      model: the model's pure functions (``build_model``/``split_model``).
      params: parameters.
      batch_stats: batch statistics (may be empty).
      x: float ``[B, H, W, C]`` images in ``[0, 1]``.
      with_logits: also return the logits.

    Returns:
      float ``[B, h, w, K]`` on the last feature map's grid (and logits ``[B, K]``
      or ``[B]`` when ``with_logits``).

    Raises:
      ValueError: the network has no GAP + linear head (see ``cam_head``).
    """
    cams, logits = _cams(model, params, batch_stats, jnp.asarray(x))
    return (cams, logits) if with_logits else cams


@functools.partial(compilation.jit, static_argnames="size")
def upsample_cam(cam: Array, size: int | tuple[int, int]) -> Array:
    """Bilinear upsampling to the input size, then per-map min-max scaling to [0, 255].

    Khakzar et al. §3.3: "we upsample the CAMs via bilinear interpolation to
    the input image size [...] and then scale their values to a range (we used
    [0 255])". ``jax.image.resize`` with half-pixel centres (PyTorch's
    ``align_corners=False``).

    Args:
      cam: float ``[B, h, w, K]``.
      size: output side ``S`` or ``(H, W)``.

    Returns:
      float32 ``[B, H, W, K]``; each ``[H, W]`` map spans ``[0, 255]`` (a
      constant map becomes zeros).
    """
    cam = jnp.asarray(cam, jnp.float32)
    if cam.ndim != 4:
        raise ValueError(f"upsample_cam needs cams [B, h, w, K], got {cam.shape}")
    h, w = (size, size) if isinstance(size, int | np.integer) else size
    up = jax.image.resize(cam, (cam.shape[0], h, w, cam.shape[3]), method="bilinear")
    return _minmax(up, axes=(1, 2), high=255.0)


def localization_map(
    method: str,
    model: ModelFns,
    params: PyTree,
    batch_stats: PyTree,
    x: Array,
    channel: Array,
    key: PRNGKey | None = None,
    **options: Any,
) -> Array:
    """Any attribution under the CAM protocol: bilinear to the input size, then ``[0, 255]``.

    Args:
      method: a name in ``arjax.evaluation.attribution.ATTRIBUTIONS`` (``"cam"``, ...).
      model: the model's pure functions.
      params: parameters.
      batch_stats: batch statistics.
      x: float ``[B, H, W, C]`` images.
      channel: int ``[B]`` the output (class) each map explains.
      key: PRNG key for random methods.
      **options: the method's keyword options.

    Returns:
      float32 ``[B, H, W]``, each map spanning ``[0, 255]`` (``upsample_cam``).
    """
    raw = attribution_map(method, model, params, batch_stats, x, channel, key, **options)
    return upsample_cam(raw[..., None], x.shape[1:3])[..., 0]


def _cam_map(model, params, batch_stats, x, channel, key=None):
    """The CAM of output ``channel[b]`` of image ``b``: ``[B, h, w]``."""
    del key
    cams = class_activation_maps(model, params, batch_stats, x)
    return jnp.take_along_axis(cams, channel[:, None, None, None], axis=3)[..., 0]


register_attribution("cam", AttributionDef(_cam_map, doc="class activation map (Zhou 2016)"))


def save_grid(
    path: PathLike,
    images: Array,
    cams: Array | None,
    saliencies: Array | None,
    boxes: Sequence | None = None,
    *,
    titles: Sequence[str] | None = None,
    class_names: Sequence[str] = (),
    alpha: float = 0.45,
    maps: Mapping[str, Array] | None = None,
) -> PathLike:
    """One row per image: the input, the CAM over it, the saliency map; boxes drawn on each.

    Khakzar et al. Fig. 1 / Fig. 4 layout. Maps are shown with their own
    range (``jet`` colour map for CAMs, gray for saliency).

    Args:
      path: PNG to write (parent folders are created).
      images: float ``[N, H, W, C]`` or ``[N, H, W]`` in ``[0, 1]``.
      cams: ``[N, H, W]`` upsampled CAMs (e.g. ``upsample_cam(...)[..., k]``) or None.
      saliencies: ``[N, H, W]`` in ``[0, 1]`` (``saliency``) or None.
      boxes: per image a list of ``(x, y, w, h)`` or ``(class, x, y, w, h)``
        boxes in input pixels (``ImageFileSource.boxes`` rows), or None.
      titles: one row label per image (e.g. "label 1, p=0.97").
      class_names: names for the box classes in the legend.
      alpha: CAM opacity over the image.
      maps: more ``[N, H, W]`` maps, one column each after the saliency, shown like
        the CAM (e.g. ``{"grad_cam": localization_map("grad_cam", ...)}``).

    Returns:
      The path written.
    """
    images = np.asarray(images, np.float32)
    if images.ndim == 4:
        images = images.mean(-1) if images.shape[-1] != 3 else images
    n = images.shape[0]
    panels = [("input", None)]
    for name, panel in (("CAM", cams), ("saliency", saliencies), *(maps or {}).items()):
        if panel is not None:
            panel = np.asarray(panel, np.float32)
            if panel.shape[:3] != images.shape[:3]:
                raise ValueError(f"save_grid: {name} maps {panel.shape} do not match images")
            panels.append((name, panel))
    if boxes is not None and len(boxes) != n:
        raise ValueError(f"save_grid: {len(boxes)} box lists for {n} images")
    fig, axes = subplots(n, len(panels), figsize=(2.4 * len(panels), 2.4 * n), squeeze=False)
    gray = dict(cmap="gray", vmin=0.0, vmax=1.0)
    for i in range(n):
        for j, (name, panel) in enumerate(panels):
            ax = axes[i, j]
            if name == "saliency":
                ax.imshow(panel[i], cmap="gray")
            else:
                ax.imshow(images[i], **({} if images.ndim == 4 else gray))
                if panel is not None:
                    ax.imshow(panel[i], cmap="jet", alpha=alpha)
            for k, x, y, w, h in box_list(boxes[i] if boxes is not None else None):
                ax.add_patch(Rectangle((x - 0.5, y - 0.5), w, h, fill=False, ec="deepskyblue"))
                if k is not None and j == 0:
                    label = class_names[k] if k < len(class_names) else str(k)
                    ax.text(x, y - 1, label, color="deepskyblue", fontsize=7, va="bottom")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(name)
        if titles is not None:
            axes[i, 0].set_ylabel(titles[i], fontsize=8)
    return _save(fig, path)


def save_box_grid(
    path: PathLike,
    model: ModelFns,
    params: PyTree,
    batch_stats: PyTree,
    data: Any,
    *,
    num_images: int = 8,
    methods: Sequence[str] = (),
    key: PRNGKey | None = None,
) -> PathLike:
    """``save_grid`` for the first ``num_images`` annotated images of ``data`` (Fig. 1).

    Each row: the image, the upsampled CAM of its first box's class, and the
    saliency of its loss (of that class's logit when ``data`` has no labels),
    then one column per attribution of ``methods`` (``localization_map`` of the same
    class, side by side with the CAM); the row title gives the class and the model's
    probability for it.

    Args:
      path: PNG to write.
      model: a GAP + linear network's pure functions.
      params: parameters.
      batch_stats: batch statistics.
      data: as for ``box_data``.
      num_images: rows.
      methods: attribution names (``attribution.ATTRIBUTIONS``) to add as columns.
      key: PRNG key of the random methods (SmoothGrad).

    Returns:
      The path written.
    """
    gather, boxes, names = box_data(data)
    positions = np.asarray(sorted(boxes)[:num_images], int)
    if positions.size == 0:
        raise ValueError("save_box_grid needs images with boxes; the data hold none")
    batch = gather(positions)
    x = jnp.asarray(batch["image"], jnp.float32)
    cams, logits = class_activation_maps(model, params, batch_stats, x, with_logits=True)
    classes = np.array([boxes[p][0][0] for p in positions])
    channel = cam_channels(classes, cams.shape[-1], names)
    rows = np.arange(len(positions))
    cam = np.asarray(upsample_cam(cams, x.shape[1:3]))[rows, ..., channel]
    if "label" in batch:
        sal = model_saliency(model, params, batch_stats, x, jnp.asarray(batch["label"]))
    else:
        logits_fn = model.logits_fn(params, batch_stats)
        sal = saliency(lambda v: logits_fn(v).reshape(len(rows), -1)[rows, channel], x)
    flat = np.asarray(logits).reshape(len(rows), -1)
    if flat.shape[1] > 1 and "label" in batch and np.ndim(batch["label"]) == 1:
        prob = np.asarray(jax.nn.softmax(flat))[rows, channel]  # softmax head
    else:
        prob = np.asarray(jax.nn.sigmoid(flat))[rows, channel]
    titles = [
        f"{names[k] if k < len(names) else k}: p={q:.2f}"
        for k, q in zip(classes, prob, strict=True)
    ]
    more = {m: localization_map(m, model, params, batch_stats, x, channel, key) for m in methods}
    return save_grid(
        path, x, cam, sal, [boxes[p] for p in positions], titles=titles, class_names=names,
        maps=more,
    )  # fmt: skip
