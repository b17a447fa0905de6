"""Data checks run when a dataset is loaded, before any training compute.

* ``check_num_classes``: the number of classes the labels give against the
  number a config expects (``data.num_classes``, or the model's head width
  through ``check_model_outputs``).
* ``verify_images``: a cheap look at every image file a dataset lists (its
  header and last bytes, no pixel decoding): the file exists, is a PNG /
  JPEG / DICOM (or another Pillow format), is not a truncated PNG or JPEG, a
  DICOM's transfer syntax has a decoder installed; multi-frame DICOM and NIfTI
  volumes are refused (``decode_image`` reads 2-D images only). One log line counts the inputs
  that reading will convert (colour to grey, alpha dropped, more than 8 bits
  per sample, non-square or resized).

Every error is one ``ConfigError`` line (a ``ValueError``: the CLI prints it
and exits with status 2) naming the file and, where there is one, the
manifest line.
"""

import collections
import concurrent.futures
import dataclasses
import logging
import os
from collections.abc import Sequence

from PIL import Image

from arjax.config_lib import ConfigError
from arjax.data.images import DICOM_HINT, dicom_decoder_problem, dicom_frames_problem, is_dicom

log = logging.getLogger(__name__)

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"IEND\xaeB`\x82"  # the IEND chunk type and its CRC: the last 8 bytes of a PNG
_JPEG_MAGIC = b"\xff\xd8\xff"
_JPEG_END = b"\xff\xd9"
_TAIL_BYTES = 1024  # JPEG writers may pad after the end-of-image marker
# PNG colour type -> (description, has colour, has alpha).
_PNG_COLOUR = {
    0: ("grey", False, False),
    2: ("RGB", True, False),
    3: ("palette", True, False),
    4: ("grey+alpha", False, True),
    6: ("RGBA", True, True),
}
_PIL_COLOUR = {"RGB", "RGBA", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "RGBX"}


def check_num_classes(
    found: int,
    expected: int | None,
    source: str,
    *,
    expected_from: str = "data.num_classes",
    classes: Sequence[str] = (),
) -> None:
    """Checks the number of classes a dataset's labels give against the number expected.

    Args:
        found: Classes (labels, for multi-label data) the dataset has.
        expected: Classes the config expects; None or 0: nothing to check.
        source: Where ``found`` comes from (a manifest path, a dataset name).
        expected_from: The config field (or model) ``expected`` comes from.
        classes: The class names found, listed in the message.

    Raises:
        ConfigError: ``source: the labels give F classes (a, b, c), but
            data.num_classes expects E ...`` when they differ.
    """
    if not expected:
        return
    if isinstance(expected, bool) or not isinstance(expected, int) or expected < 1:
        raise ConfigError(f"{expected_from} must be an int >= 1 or None, got {expected!r}")
    if found != expected:
        names = f" ({', '.join(classes)})" if classes else ""
        raise ConfigError(
            f"{source}: the labels give {found} classes{names}, but {expected_from} expects "
            f"{expected}; fix the labels, or set data.label_names to the {expected} valid classes"
        )


def check_model_outputs(num_classes: int, num_outputs: int, source: str) -> None:
    """Checks a model head width (``model.num_outputs``) against the data's classes.

    Args:
        num_classes: ``DatasetSplits.num_classes``.
        num_outputs: ``model.num_outputs``: 0 (one output per class, the
            default), 1 (one binary logit: needs 2 classes, or 1 label), or
            the number of classes.
        source: The dataset (name or manifest) for the message.

    Raises:
        ConfigError: When the head cannot represent the data's classes.
    """
    if not num_outputs or num_outputs == num_classes:
        return
    if num_outputs == 1 and num_classes == 2:
        return
    binary = " or 1 (one binary logit)" if num_classes == 2 else ""
    raise ConfigError(
        f"model.num_outputs={num_outputs}, but {source} has {num_classes} classes; "
        f"valid: 0 (one output per class), {num_classes}{binary}"
    )


@dataclasses.dataclass(frozen=True)
class ImageInfo:
    """What the header of one image file says.

    Attributes:
        kind: ``"PNG"``, ``"JPEG"``, ``"DICOM"`` or another Pillow format name.
        width, height: Pixels.
        colour: Colour samples (RGB, palette, ...) rather than grey.
        alpha: An alpha channel (dropped on read).
        bits: Bits per sample (> 8: scaled to 8 bits on read).
        mode: A short description (``"RGBA"``, ``"grey"``, ``"MONOCHROME2"``).
    """

    kind: str
    width: int
    height: int
    colour: bool
    alpha: bool
    bits: int
    mode: str


class ImageProblem(Exception):
    """An image file fails the check (the message says why)."""


def _inspect_dicom(path: str) -> ImageInfo:
    try:
        import pydicom  # optional extra [medical]
    except ImportError:
        raise ImageProblem(DICOM_HINT) from None
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except Exception as e:  # pydicom raises many types for a bad header
        raise ImageProblem(f"unreadable DICOM header: {type(e).__name__}: {e}") from None
    if "Rows" not in ds or "Columns" not in ds:
        raise ImageProblem("DICOM without an image (no Rows / Columns)")
    problem = dicom_decoder_problem(ds)
    if problem:
        raise ImageProblem(f"DICOM {problem}")
    problem = dicom_frames_problem(ds)
    if problem:
        raise ImageProblem(problem)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    return ImageInfo(
        "DICOM",
        int(ds.Columns),
        int(ds.Rows),
        colour=samples >= 3 or photometric == "PALETTE COLOR",
        alpha=False,
        bits=int(ds.get("BitsStored", 8) or 8),
        mode=photometric,
    )


def _inspect_pil(path: str, kind: str) -> ImageInfo:
    try:
        with Image.open(path) as img:  # reads the header only
            mode, (width, height), fmt = img.mode, img.size, img.format
    except Exception as e:  # Pillow raises many types for a bad file
        raise ImageProblem(f"unreadable {kind} header: {type(e).__name__}: {e}") from None
    bits = 16 if mode.startswith("I") else 32 if mode == "F" else 8
    return ImageInfo(fmt or kind, width, height, mode in _PIL_COLOUR, "A" in mode, bits, mode)


def inspect_image(path: str) -> ImageInfo:
    """Reads what a cheap check needs from one image file's header and last bytes.

    Args:
        path: An image file.

    Returns:
        Its ``ImageInfo``.

    Raises:
        FileNotFoundError: If ``path`` is not a file.
        ImageProblem: Why the file would not decode (empty, truncated, not an
            image, a DICOM without a decoder for its transfer syntax, NIfTI).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image file not found: {path}")
    with open(path, "rb") as f:
        head = f.read(512)
        size = os.fstat(f.fileno()).st_size
        f.seek(max(0, size - _TAIL_BYTES))
        tail = f.read()
    if not head:
        raise ImageProblem("empty file")
    lower = path.lower()
    if (
        lower.endswith((".nii", ".nii.gz"))
        or head[344:348] in (b"n+1\0", b"ni1\0")
        or (head[4:8] in (b"n+2\0", b"ni2\0"))
    ):
        raise ImageProblem(
            "NIfTI volume: not read by arjax (PNG, JPEG, DICOM 2-D images); export its slices"
        )
    if head.startswith(_PNG_MAGIC):
        if len(head) < 33 or head[12:16] != b"IHDR":
            raise ImageProblem("corrupt PNG (no IHDR header chunk)")
        if not tail.endswith(_PNG_END):
            raise ImageProblem(f"truncated PNG (no IEND chunk at the end of its {size} bytes)")
        width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
        bits, colour_type = head[24], head[25]
        if colour_type not in _PNG_COLOUR or not width or not height:
            raise ImageProblem(f"corrupt PNG header (colour type {colour_type}, {width}x{height})")
        mode, colour, alpha = _PNG_COLOUR[colour_type]
        if bits > 8:
            mode = f"{bits}-bit {mode}"
        return ImageInfo("PNG", width, height, colour, alpha, 8 if colour_type == 3 else bits, mode)
    if head.startswith(_JPEG_MAGIC):
        if _JPEG_END not in tail:
            raise ImageProblem(f"truncated JPEG (no end-of-image marker; {size} bytes)")
        return _inspect_pil(path, "JPEG")
    if head[128:132] == b"DICM" or is_dicom(path):
        return _inspect_dicom(path)
    try:
        return _inspect_pil(path, "image")
    except ImageProblem:
        raise ImageProblem(f"not a PNG, JPEG or DICOM image (first bytes {head[:8]!r})") from None


def _conversions(infos: Sequence[ImageInfo], channels: int, image_size: int) -> dict[str, int]:
    """Counts of the conversions ``decode_image`` will apply silently."""
    counts: collections.Counter = collections.Counter()
    for info in infos:
        if channels == 1 and info.colour:
            counts["colour -> grey"] += 1
        if info.alpha:
            counts["alpha dropped"] += 1
        if info.bits > 8:
            counts[">8-bit -> 8-bit"] += 1
        if info.width != info.height:
            counts[f"non-square, stretched to {image_size}x{image_size}"] += 1
        elif info.width != image_size:
            counts[f"resized to {image_size}x{image_size}"] += 1
    return dict(counts)


def verify_images(
    paths: Sequence[str],
    where: Sequence[str],
    *,
    channels: int,
    image_size: int,
    source: str,
    threads: int = 8,
) -> dict[str, int]:
    """Checks that every listed image file will decode, before any compute.

    Reads each file's header and last kilobyte (``inspect_image``); no pixels
    are decoded. Logs one line with the number of files checked by format and
    the conversions reading will make (WARNING when colour, alpha, > 8-bit or
    non-square inputs are among them, else INFO).

    Args:
        paths: The image files.
        where: For each path, where it is listed (``"manifest.csv:12"``).
        channels: Channels the data are read with (1 or 3).
        image_size: Side the images are resized to.
        source: The dataset (manifest path or name) for the log line.
        threads: Threads reading headers (I/O bound).

    Returns:
        Conversion name -> number of files (empty when none).

    Raises:
        ConfigError: ``where: path: reason (k of N image files fail the
            check; the first is shown)`` for a missing or undecodable file.
    """
    if len(paths) != len(where):
        raise ValueError(f"{len(paths)} paths but {len(where)} locations")

    def check(path: str):
        try:
            return inspect_image(path)
        except FileNotFoundError:
            return ImageProblem("image file not found")
        except ImageProblem as e:
            return e
        except OSError as e:
            return ImageProblem(f"unreadable: {type(e).__name__}: {e}")

    if threads > 1 and len(paths) > 32:
        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            results = list(pool.map(check, paths))
    else:
        results = [check(p) for p in paths]
    bad = [i for i, r in enumerate(results) if isinstance(r, ImageProblem)]
    if bad:
        i = bad[0]
        raise ConfigError(
            f"{where[i]}: {paths[i]}: {results[i]} ({len(bad)} of {len(paths)} image files "
            "fail the check; the first is shown)"
        )
    formats = collections.Counter(r.kind for r in results)
    counts = _conversions(results, channels, image_size)
    lossy = any(not k.startswith("resized") for k in counts)
    log.log(
        logging.WARNING if lossy else logging.INFO,
        "%s: %d image files decodable (%s); converted on read (%d-channel %dx%d): %s",
        source,
        len(paths),
        ", ".join(f"{k} {n}" for k, n in sorted(formats.items())),
        channels,
        image_size,
        image_size,
        ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "none",
    )
    return counts


__all__ = [
    "ImageInfo",
    "ImageProblem",
    "check_model_outputs",
    "check_num_classes",
    "inspect_image",
    "verify_images",
]
