"""Image decoding (to uint8 CHW RGB tensors), what `data check` finds in one image file, and the map-style dataset.

Decoding rules, shared by loading and `data check` (which reports each as a warning, or an error when refused):
- 16-bit pixels (PIL modes `I;16*`, and `I` from 16-bit PNG or PGM/PPM) keep their high byte (`value >> 8`), as PIL
  already does for 16-bit colour PNGs; PIL's `convert("RGB")` would clip them to near-white. Other `I` and `F`
  (32-bit, float) images are refused: they have no known 8-bit range.
- Transparency (alpha channels, palette or colour-key transparency) is dropped: transparent pixels keep their stored
  colour, as `convert("RGB")` in the reference pipelines (torchvision's loader, TFDS's 3-channel decode) leaves them.
- CMYK is converted by PIL's formula (no colour profile). EXIF orientation is not applied: pixels are used as stored,
  as PIL and TFDS load them.
- Images over the pixel limit (PIL's decompression-bomb guard, `PIL.Image.MAX_IMAGE_PIXELS`, about 89 megapixels)
  are refused with their size. If you trust the data, raise the limit with the environment variable
  `WEGEFT_MAX_IMAGE_PIXELS` (a number of pixels; 0 removes it), which also sets PIL's own guard.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

MAX_PIXELS_ENV = "WEGEFT_MAX_IMAGE_PIXELS"
DECODER_VERSION = 2  # part of the decoded cache's key: bump whenever some file decodes to other pixels

# why an image is refused (`ImageCheck.error`) ...
MISSING, UNREADABLE, TOO_LARGE, UNSUPPORTED = "missing", "unreadable", "too large", "unsupported"
# ... and what loading changes about it (`ImageCheck.warnings`)
SIXTEEN_BIT, TRANSPARENCY, CMYK, EXIF_ORIENTATION = "16-bit image", "transparency", "cmyk image", "exif orientation"

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
_ORIENTATIONS = {
    2: "mirrored",
    3: "rotated 180 degrees",
    4: "flipped upside down",
    5: "mirrored and rotated",
    6: "rotated 90 degrees clockwise",
    7: "mirrored and rotated",
    8: "rotated 90 degrees counter-clockwise",
}
_GUARD = threading.Lock()  # held while PIL's guard is lifted, and to read it
os.register_at_fork(before=_GUARD.acquire, after_in_parent=_GUARD.release, after_in_child=_GUARD.release)
_RAISE_LIMIT = "if you trust the data, set " + MAX_PIXELS_ENV + "={} or more (0: no limit)"


class ImageError(ValueError):
    """An image that cannot be used; `kind` is one of `UNREADABLE`, `TOO_LARGE`, `UNSUPPORTED`."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind, self.reason = kind, reason

    def __reduce__(self):  # pickled (worker processes) with both arguments
        return type(self), (self.kind, self.reason)


def _env_limit() -> tuple[bool, int | None]:
    """Whether `$WEGEFT_MAX_IMAGE_PIXELS` is set, and its limit (None: no limit)."""
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not raw:
        return False, None
    if not raw.isdigit():
        raise ValueError(f"{MAX_PIXELS_ENV}={raw!r} should be a number of pixels (0: no limit)")
    return True, int(raw) or None


def pixel_limit() -> int | None:
    """The most pixels an image may have: `$WEGEFT_MAX_IMAGE_PIXELS` when set (0: no limit), else PIL's guard.

    Raises:
        ValueError: the environment variable is not a non-negative integer.
    """
    is_set, limit = _env_limit()
    if is_set:
        return limit
    with _GUARD:
        return Image.MAX_IMAGE_PIXELS


def _open(source: str | Path | io.BytesIO) -> Image.Image:
    """`Image.open` refusing images over the pixel limit with their size (PIL's guard warns, or raises without it)."""
    is_set, limit = _env_limit()
    with _GUARD:  # PIL's guard is a module global: lifted for the header parse only (no pixel is decoded here)
        limit = limit if is_set else Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            image = Image.open(source)
        finally:  # PIL's guard back, or set to the environment's limit, which then holds while decoding too
            Image.MAX_IMAGE_PIXELS = limit
    width, height = image.size
    if limit is not None and width * height > limit:
        image.close()
        raise ImageError(
            TOO_LARGE,
            f"{width:,}x{height:,} = {width * height:,} pixels, over the limit of {limit:,} (a guard against "
            f"decompression bombs); {_RAISE_LIMIT.format(width * height)}",
        )
    return image


def _failure(err: Exception) -> ImageError:
    """Any decoder failure as an `ImageError` (a decoder may fail in many ways on a broken file)."""
    if isinstance(err, ImageError):
        return err
    if isinstance(err, Image.DecompressionBombError):  # PIL's own check while decoding (TIFF tiles, GIF frames)
        return ImageError(TOO_LARGE, f"{err} ({_RAISE_LIMIT.format('<pixels>')})")
    text = str(err)
    plain = isinstance(err, OSError | SyntaxError | ValueError) and text
    return ImageError(UNREADABLE, text if plain else f"{type(err).__name__}: {text}")


def _from_16_bit(image: Image.Image) -> np.ndarray:
    """The high byte of 16-bit grey pixels, `(H, W)` uint8; other integer or float pixels are refused."""
    array = np.asarray(image)
    sixteen = image.mode in _SIXTEEN_BIT_MODES or (image.mode == "I" and image.format in ("PNG", "PPM"))
    if not sixteen or array.size and (array.min() < 0 or array.max() > 0xFFFF):
        bits = "floating-point" if image.mode == "F" else "32-bit integer"
        raise ImageError(
            UNSUPPORTED, f"{bits} pixels (PIL mode {image.mode}) have no known 8-bit range; save it with 8 or 16 bits"
        )
    return (array.astype(np.uint32) >> 8).astype(np.uint8)


def _to_rgb(image: Image.Image) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """Decode to `(H, W, 3)` uint8 by the module's rules, with what was changed on the way (kind, detail)."""
    mode, changes = image.mode, []
    if mode in (*_SIXTEEN_BIT_MODES, "I", "F"):
        grey = _from_16_bit(image)
        changes.append((SIXTEEN_BIT, f"16-bit (PIL mode {mode}): loaded as value >> 8 (convert('RGB') clips it)"))
        return np.repeat(grey[:, :, None], 3, axis=2), changes
    if mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = np.asarray(image.convert("RGBA"))  # palette transparency too, without PIL's warning about it
        if rgba.size and rgba[:, :, 3].min() < 255:
            what = f"transparent pixels (PIL mode {mode}{', palette transparency' if mode == 'P' else ''})"
            changes.append((TRANSPARENCY, f"{what}: alpha dropped, they keep their stored colour"))
        return np.ascontiguousarray(rgba[:, :, :3]), changes
    if mode == "CMYK":
        changes.append((CMYK, "CMYK: converted to RGB by PIL's formula, without a colour profile"))
    return np.asarray(image.convert("RGB")), changes


def read_image(path: str | Path) -> torch.Tensor:
    """Decode an image file to a `(3, H, W)` uint8 RGB tensor by the module's rules (grey, palette, 16-bit, CMYK and
    transparent images are converted; nothing is rotated).

    Decoding uses PIL (libjpeg-turbo, libpng); torchvision's own decoders are deprecated since torchvision 0.29.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file cannot be decoded as an image, has more pixels than the limit, or pixels without a known
            8-bit range (an `ImageError`, path named).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"missing image {path}")
    _env_limit()  # a bad setting is the user's error, not the file's
    try:
        with _open(path) as image:
            array, _ = _to_rgb(image)
    except Exception as err:  # any decoder failure, named with the file
        found = _failure(err)
        what = f"cannot decode image {path}" if found.kind == UNREADABLE else f"image {path} is {found.kind}"
        raise ImageError(found.kind, f"{what}: {found.reason}") from err
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))  # (H, W, 3) -> (3, H, W), one copy


@dataclass(frozen=True)
class ImageCheck:
    """What `inspect_image` found in one file.

    Attributes:
        error: None when the image loads, else `MISSING`, `UNREADABLE`, `TOO_LARGE` or `UNSUPPORTED`.
        reason: why, for an error.
        warnings: `(kind, detail)` of what loading changes (`SIXTEEN_BIT`, `TRANSPARENCY`, `CMYK`, `EXIF_ORIENTATION`).
        digest: BLAKE2b of the file's bytes (None when it could not be read), to find identical files.
    """

    error: str | None = None
    reason: str = ""
    warnings: tuple[tuple[str, str], ...] = ()
    digest: str | None = None


def _orientation(image: Image.Image) -> int:
    try:
        value = image.getexif().get(0x0112, 1)  # the Orientation tag
    except Exception:  # a broken EXIF block leaves the pixels as they are; nothing to report about orientation
        return 1
    return value if isinstance(value, int) else 1


def inspect_image(path: str | Path) -> ImageCheck:
    """Decode `path` as `read_image` does (JPEGs at reduced scale, which is fast) and say what is wrong or changed."""
    path = Path(path)
    if not path.is_file():
        return ImageCheck(MISSING)
    _env_limit()  # a bad setting is the user's error, not the file's
    digest = None
    try:
        data = path.read_bytes()
        digest = hashlib.blake2b(data, digest_size=16).hexdigest()
        with _open(io.BytesIO(data)) as image:
            image.draft("RGB", (64, 64))  # JPEG: decode at 1/8 scale; still reads the whole stream
            _, changes = _to_rgb(image)
            orientation = _orientation(image)
    except Exception as err:  # any decoder failure is a finding, not a crash
        found = _failure(err)
        return ImageCheck(found.kind, found.reason, digest=digest)
    if orientation in _ORIENTATIONS:
        shown = _ORIENTATIONS[orientation]
        changes.append(
            (EXIF_ORIENTATION, f"EXIF orientation {orientation} (viewers show it {shown}): used as stored, unrotated")
        )
    return ImageCheck(warnings=tuple(changes), digest=digest)


def verify_image(path: str | Path) -> str | None:
    """Why `path` is not a usable image, or None when it decodes (see `inspect_image`).

    Returns:
        `"missing"`, or `"<error>: <reason>"` (e.g. `"unreadable: ..."`, `"too large: ..."`), or None.
    """
    found = inspect_image(path)
    if found.error is None or found.error == MISSING:
        return found.error
    return f"{found.error}: {found.reason}"


class ImageListDataset(Dataset):
    """Map-style dataset over `(path, label)` pairs: decodes with `read_image`, then applies `transform`.

    Args:
        samples: absolute image paths and class indices.
        transform: applied to the uint8 `(3, H, W)` tensor (e.g. a `Preprocessing` pipeline); None keeps it.
    """

    def __init__(self, samples: Sequence[tuple[Path, int]], transform: Callable | None = None) -> None:
        self.samples = list(samples)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        image = read_image(path)
        return (self.transform(image) if self.transform else image), label

    @property
    def labels(self) -> list[int]:
        return [label for _, label in self.samples]
