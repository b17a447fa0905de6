"""Image files -> fixed-size arrays: decoding, resizing and a file-backed record source.

``decode_image`` turns one PNG, JPEG or DICOM file into uint8 ``[S, S, C]``
(bilinear resize with Pillow, antialiased when shrinking; RGB/RGBA -> luma
for one channel, grey replicated for three; 16-bit PNGs scaled by 1/65535;
DICOM through its modality and VOI look-up tables, then min-max scaled, with
MONOCHROME1 inverted; PALETTE COLOR through its palette to RGB; multi-frame
DICOM refused, naming its frame count). A DICOM file
is recognised by its ``.dcm`` / ``.dicom`` suffix or, for any other suffix
that is not a Pillow image's, by the ``DICM`` marker at byte 128. Aspect
ratios are not kept: every image is stretched to ``S x S`` (COVID-CT slices
vary in size; ChestX-ray14 is square).

``ImageFileSource`` is the pipeline's ``RecordSource`` over a list of files:
``gather`` decodes a batch (in grain worker processes when the pipeline uses
them) and returns float32 images in ``[0, 1]``. With ``cache_dir`` it fills a
one-time cache of the decoded uint8 arrays (a ``.npy`` memmap shared by all
processes); later reads of a cached example are a memmap row copy.
"""

import concurrent.futures
import hashlib
import os

import numpy as np
from PIL import Image

from arjax.data.pipeline import INDEX_KEY

# Image modes Pillow uses for 16-bit (and 32-bit integer) grayscale PNGs.
_WIDE_INT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_CACHE_VERSION = "1"
DICOM_HINT = "DICOM needs pydicom: pip install 'arjax[medical]'"


# Suffixes read by Pillow: never sniffed for the DICOM marker.
_PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def has_dicom_marker(path: str) -> bool:
    """Whether ``path`` holds the DICOM part-10 marker ``DICM`` at byte 128 (unreadable: False)."""
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def is_dicom(path: str) -> bool:
    """Whether ``path`` is a DICOM file.

    True for a ``.dcm`` / ``.dicom`` suffix; False for a Pillow image suffix
    (``.png``, ``.jpg``, ...); otherwise (no suffix, ``.ima``, ...) whether the
    file holds the ``DICM`` marker at byte 128 (``has_dicom_marker``).
    """
    lower = path.lower()
    if lower.endswith((".dcm", ".dicom")):
        return True
    if lower.endswith(_PIL_SUFFIXES):
        return False
    return has_dicom_marker(path)


def _import_pydicom(path: str):
    try:
        import pydicom  # optional extra [medical]
    except ImportError:
        raise ImportError(f"cannot read {path}: {DICOM_HINT}") from None
    return pydicom


def dicom_decoder_problem(ds) -> str | None:
    """Why the installed pydicom cannot decode a DICOM file's pixels, from its header alone.

    Compressed transfer syntaxes (JPEG-LS, JPEG 2000, lossless JPEG, ...) need
    a decoder plugin (pylibjpeg, gdcm, pyjpegls); Pillow decodes 8-bit JPEG
    Extended only, not its 12-bit samples.

    Args:
        ds: A ``pydicom`` dataset (``dcmread(path, stop_before_pixels=True)``).

    Returns:
        One line naming the transfer syntax and what to install, or None when
        a decoder is available.
    """
    meta = getattr(ds, "file_meta", None)
    syntax = None if meta is None else meta.get("TransferSyntaxUID", None)
    if syntax is None:
        return None  # no file meta: pydicom reads it as uncompressed
    name = f"transfer syntax {syntax.name!r} ({syntax})"
    try:
        from pydicom.pixels import get_decoder  # pydicom >= 3
    except ImportError:
        get_decoder = None
    if get_decoder is None:  # pydicom 2.x: the configured pixel data handlers
        import pydicom.config

        handlers = [
            h
            for h in pydicom.config.pixel_data_handlers
            if h.supports_transfer_syntax(syntax) and h.is_available()
        ]
        if not handlers:
            return f"{name} has no pixel data handler installed (pylibjpeg, gdcm, ...)"
        plugins = {h.__name__.rsplit(".", 1)[-1].removesuffix("_handler") for h in handlers}
    else:
        try:
            decoder = get_decoder(syntax)
        except NotImplementedError:
            return f"{name}: pydicom has no decoder for it"
        if not decoder.is_available:
            return f"{name} needs a decoder plugin: {'; '.join(decoder.missing_dependencies)}"
        plugins = set(decoder.available_plugins)
    bits = int(ds.get("BitsStored", 8) or 8)
    if syntax == "1.2.840.10008.1.2.4.51" and bits > 8 and plugins <= {"pillow"}:
        return (
            f"{name} with {bits}-bit samples: Pillow decodes 8-bit JPEG only; "
            "install pylibjpeg and pylibjpeg-libjpeg, or python-gdcm"
        )
    return None


def dicom_frames_problem(ds) -> str | None:
    """Why a DICOM dataset is not one 2-D image: ``NumberOfFrames`` above 1, else None.

    A multi-frame file (a CT or dose volume, a cine loop) is refused rather
    than silently cut to one frame: which frame is the image is the user's call.
    """
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        return (
            f"multi-frame DICOM ({frames} frames): arjax reads 2-D images; "
            "export the frames to single-frame files (one per manifest row)"
        )
    return None


def _read_dicom(path: str) -> np.ndarray:
    """DICOM pixels as float32 ``[H, W]`` or ``[H, W, 3]`` in [0, 1]."""
    pydicom = _import_pydicom(path)
    try:  # pydicom >= 3
        from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut
    except ImportError:
        from pydicom.pixel_data_handlers.util import (
            apply_color_lut,
            apply_modality_lut,
            apply_voi_lut,
        )

    ds = pydicom.dcmread(path, force=True)
    problem = dicom_frames_problem(ds)
    if problem:
        raise ValueError(problem)
    pixels = ds.pixel_array
    if ds.get("PhotometricInterpretation", "") == "PALETTE COLOR":
        # Palette indices -> RGB entries (8 or 16 bits, as the LUT stores them).
        rgb = apply_color_lut(pixels, ds)
        return rgb.astype(np.float32) / float(np.iinfo(rgb.dtype).max)
    if ds.get("SamplesPerPixel", 1) == 1:
        pixels = apply_voi_lut(apply_modality_lut(pixels, ds), ds)
    pixels = pixels.astype(np.float32)
    low, high = float(pixels.min()), float(pixels.max())
    pixels = (pixels - low) / (high - low) if high > low else np.zeros_like(pixels)
    if ds.get("PhotometricInterpretation", "") == "MONOCHROME1":
        pixels = 1.0 - pixels
    return pixels


def _resize_float(pixels: np.ndarray, image_size: int, channels: int) -> np.ndarray:
    """Float ``[H, W(, K)]`` in [0, 1] -> uint8 ``[S, S, channels]`` (bilinear per channel)."""
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if channels == 1 and pixels.shape[-1] >= 3:
        pixels = pixels[..., :3] @ np.array([0.299, 0.587, 0.114], np.float32)[:, None]
    planes = []
    for k in range(pixels.shape[-1]):
        plane = Image.fromarray(np.ascontiguousarray(pixels[..., k], np.float32), mode="F")
        if plane.size != (image_size, image_size):
            plane = plane.resize((image_size, image_size), Image.Resampling.BILINEAR)
        planes.append(np.asarray(plane))
    out = np.stack(planes, axis=-1)
    if out.shape[-1] != channels:
        out = np.repeat(out[..., :1], channels, axis=-1)
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)


def _decode_pil(path: str, image_size: int, channels: int) -> np.ndarray:
    target = "L" if channels == 1 else "RGB"
    with Image.open(path) as img:
        if img.format == "JPEG":
            img.draft(target, (image_size, image_size))  # DCT-domain downscale: much faster
        if img.mode in _WIDE_INT_MODES:
            pixels = np.asarray(img).astype(np.float32) / 65535.0
            return _resize_float(np.clip(pixels, 0.0, 1.0), image_size, channels)
        if img.mode == "F":
            return _resize_float(np.clip(np.asarray(img), 0.0, 1.0), image_size, channels)
        img = img.convert(target)  # RGBA/LA/P -> L or RGB; alpha is ignored
        if img.size != (image_size, image_size):
            img = img.resize((image_size, image_size), Image.Resampling.BILINEAR)
        out = np.asarray(img, dtype=np.uint8)
    return out[..., None] if out.ndim == 2 else out


def decode_image(path: str, image_size: int, channels: int = 1) -> np.ndarray:
    """Reads and resizes one image file.

    Args:
        path: A PNG, JPEG (any Pillow format) or DICOM file (see ``is_dicom``).
        image_size: Output side ``S`` in pixels.
        channels: 1 (grayscale) or 3 (RGB).

    Returns:
        uint8 ``[S, S, channels]``.

    Raises:
        FileNotFoundError: If ``path`` does not exist (names the path).
        ValueError: If the file cannot be decoded (names the path and the reason).
        ImportError: For DICOM without pydicom (names the path and the extra).
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        if is_dicom(path):
            return _resize_float(_read_dicom(path), image_size, channels)
        return _decode_pil(path, image_size, channels)
    except ImportError:
        raise
    except Exception as e:  # Pillow / pydicom raise many types for a bad file
        raise ValueError(f"unreadable image {path}: {type(e).__name__}: {e}") from e


def image_size_of(path: str) -> tuple[int, int]:
    """``(width, height)`` of an image file from its header, without decoding pixels.

    Raises:
        ValueError: If the header cannot be read (names the path).
    """
    try:
        if is_dicom(path):
            ds = _import_pydicom(path).dcmread(path, stop_before_pixels=True, force=True)
            return int(ds.Columns), int(ds.Rows)
        with Image.open(path) as img:
            return img.size
    except ImportError:
        raise
    except Exception as e:
        raise ValueError(f"unreadable image {path}: {type(e).__name__}: {e}") from e


class ImageFileSource:
    """A ``RecordSource`` over image files, decoded and resized on read.

    Picklable (grain worker processes each reopen the cache). Example ``i`` is
    ``paths[i]`` with label ``labels[i]``; ``gather`` adds ``"index" = i``.

    Args:
        paths: ``N`` image file paths (absolute, or relative to the cwd).
        labels: int32 ``[N]`` class ids or float32 multi-hot ``[N, K]``.
        image_size: Side ``S`` of the square images ``gather`` returns.
        channels: 1 (grayscale) or 3 (RGB).
        cache_dir: Folder for a one-time cache of decoded uint8 arrays, a
            ``.npy`` memmap ``[N, 1 + S*S*C]`` (column 0: "filled" flag)
            named by a hash of ``paths`` and ``(S, C)``; filled as examples are
            first read, by whichever process reads them. ``None``: no cache.
            The key does not see file contents: delete the cache after
            changing images in place.
        boxes: Position -> list of ``(class_index, x, y, w, h)`` in pixels of
            the ``S x S`` input (float); positions without boxes may be absent.
        class_names: Names of the ``K`` classes (for reports).
        decode_threads: Threads decoding one batch (Pillow releases the GIL
            while decoding); 0 or 1: sequential.
        patients: Patient id per example ``[N]`` (strings), or None; used to
            keep a patient's images in one cross-validation fold.

    Attributes:
        paths, boxes, class_names, image_size, channels, patients: As given.
    """

    def __init__(
        self,
        paths: list[str],
        labels: np.ndarray,
        image_size: int,
        channels: int = 1,
        cache_dir: str | None = None,
        boxes: dict[int, list[tuple[int, float, float, float, float]]] | None = None,
        class_names: tuple[str, ...] = (),
        decode_threads: int = 0,
        patients: np.ndarray | None = None,
    ):
        labels = np.asarray(labels)
        labels = labels.astype(np.int32 if labels.ndim == 1 else np.float32)
        if len(paths) == 0:
            raise ValueError("ImageFileSource needs at least one path")
        if labels.shape[0] != len(paths) or labels.ndim not in (1, 2):
            raise ValueError(f"labels {labels.shape} do not match {len(paths)} paths")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        if image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {image_size}")
        self.paths = list(paths)
        self._labels = labels
        self.image_size = int(image_size)
        self.channels = int(channels)
        self.boxes = dict(boxes or {})
        self.class_names = tuple(class_names)
        self.decode_threads = int(decode_threads)
        self.patients = None if patients is None else np.asarray(patients)
        if self.patients is not None and self.patients.shape != (len(paths),):
            raise ValueError(f"patients {self.patients.shape} do not match {len(paths)} paths")
        self.cache_path = None
        if cache_dir is not None:
            self.cache_path = self._create_cache(os.path.expanduser(cache_dir))
        self._cache = None
        self._pool = None

    def __len__(self) -> int:
        return len(self.paths)

    def __repr__(self) -> str:
        return (
            f"ImageFileSource(N={len(self)}, image_size={self.image_size}, "
            f"channels={self.channels}, labels={self._labels.dtype}{list(self._labels.shape)}, "
            f"boxes={len(self.boxes)}, cache={self.cache_path})"
        )

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_cache"] = None  # memmaps and thread pools are reopened per process
        state["_pool"] = None
        return state

    @property
    def labels(self) -> np.ndarray:
        """int32 ``[N]`` or float32 multi-hot ``[N, K]``; no image is read."""
        return self._labels

    @property
    def _row_size(self) -> int:
        return self.image_size * self.image_size * self.channels

    def _create_cache(self, cache_dir: str) -> str:
        """Creates (once, atomically) the cache file for these paths; returns its path."""
        digest = hashlib.sha1(
            "\n".join(self.paths).encode()
            + f"|{self.image_size}|{self.channels}|{_CACHE_VERSION}".encode()
        ).hexdigest()[:20]
        shape = (len(self), 1 + self._row_size)
        name = f"images_{digest}_{self.image_size}x{self.image_size}x{self.channels}.npy"
        path = os.path.join(cache_dir, name)
        if not os.path.exists(path):
            os.makedirs(cache_dir, exist_ok=True)
            tmp = f"{path}.{os.getpid()}.tmp"
            np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape).flush()
            try:
                os.link(tmp, path)  # fails if another process created it first
            except FileExistsError:
                pass
            except OSError:  # no hard links on this filesystem
                os.replace(tmp, path)
            if os.path.exists(tmp):
                os.remove(tmp)
        existing = np.load(path, mmap_mode="r")
        if existing.shape != shape or existing.dtype != np.uint8:
            raise ValueError(
                f"image cache {path} holds {existing.dtype}{list(existing.shape)}, expected "
                f"uint8{list(shape)}; delete it to rebuild"
            )
        return path

    def decode(self, position: int) -> np.ndarray:
        """Decodes example ``position`` from its file: uint8 ``[S, S, C]``."""
        return decode_image(self.paths[position], self.image_size, self.channels)

    def _decode_many(self, positions: np.ndarray) -> np.ndarray:
        out = np.empty((len(positions), self.image_size, self.image_size, self.channels), np.uint8)
        if self.decode_threads > 1 and len(positions) > 1:
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(self.decode_threads)
            for i, image in enumerate(self._pool.map(self.decode, positions)):
                out[i] = image
        else:
            for i, position in enumerate(positions):
                out[i] = self.decode(position)
        return out

    def _read_cached(self, indices: np.ndarray) -> np.ndarray:
        if self._cache is None:
            try:
                self._cache = np.load(self.cache_path, mmap_mode="r+")
            except OSError:  # a read-only cache: read what is filled, decode the rest
                self._cache = np.load(self.cache_path, mmap_mode="r")
        rows = self._cache[indices]  # one fancy-index copy [B, 1 + S*S*C]
        missing = np.flatnonzero(rows[:, 0] == 0)
        if missing.size:
            decoded = self._decode_many(indices[missing]).reshape(missing.size, -1)
            rows[missing, 1:] = decoded
            if not self._cache.flags.writeable:
                return rows[:, 1:].reshape(-1, self.image_size, self.image_size, self.channels)
            # Pixels first, then the flag: a reader never sees a flagged, unwritten row.
            for position, pixels in zip(indices[missing], decoded, strict=True):
                self._cache[position, 1:] = pixels
                self._cache[position, 0] = 1
        return rows[:, 1:].reshape(len(indices), self.image_size, self.image_size, self.channels)

    def __getitem__(self, position: int) -> dict[str, np.ndarray]:
        """Example ``position`` (grain ``RandomAccessDataSource`` protocol), as ``gather``."""
        return {k: v[0] for k, v in self.gather(np.array([int(position)])).items()}

    def gather(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """Reads a batch of examples.

        Args:
            indices: int array ``[B]`` of positions in ``[0, N)``.

        Returns:
            ``{"image": float32 [B, S, S, C] in [0, 1] (uint8 / 255), "label": int32 [B] or
            float32 [B, K], "index": int32 [B]}``.

        Raises:
            FileNotFoundError / ValueError: Naming the file that is missing or unreadable.
        """
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if indices.size and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(f"indices outside [0, {len(self)}): {indices}")
        if self.cache_path is None:
            raw = self._decode_many(indices)
        else:
            raw = self._read_cached(indices)
        images = np.empty(raw.shape, np.float32)
        np.divide(raw, np.float32(255.0), out=images)
        return {
            "image": images,
            "label": self._labels[indices],
            INDEX_KEY: indices.astype(np.int32),
        }
