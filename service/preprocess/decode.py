"""The decode stage: encoded image bytes into a fixed-size RGB ``uint8`` array.

Pillow and NumPy only, never TensorFlow: it runs in every front-end process (and the tests
and tools import it), which must start fast and small.

The model-specific normalisation (``preprocess_input``) is *not* done here: the model stage
normalises the ``uint8`` pixels inside its compiled function (``model/normalize.py``), so
inter-process and host-to-device copies stay four times smaller than float32.
"""

from __future__ import annotations

import io
import re
import time
import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from ..errors import ImageError

ImageFile.LOAD_TRUNCATED_IMAGES = False

# The formats the service takes (README, docs/PROTOCOLS.md), as Pillow names them; a JPEG's
# opener also gives MPO, a camera's multi-picture JPEG. Pillow's other decoders are left out:
# each is more code that client bytes reach, and some hold further images (an ICNS its PNGs)
# that a header check does not see.
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
_NAMES = "JPEG, PNG, WebP, GIF, BMP or TIFF"
# Pillow warns past its pixel limit and raises past twice it. Decoding runs in several threads
# at once, and warning filters are the process's: a warning cannot be made an error for one
# call without a race. So the header is checked here, exactly, and Pillow's limit is set to
# half the service's (below), so that it raises for anything larger that a file holds inside.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

ResizePolicy = Literal["stretch", "crop"]


@dataclass(frozen=True)
class PreprocessConfig:
    """How to turn bytes into model input pixels.

    Args:
        size: (height, width) of the model input.
        resize: ``stretch`` resizes to ``size`` ignoring aspect ratio (the Keras examples);
            ``crop`` resizes the shorter side to ``size / crop_fraction`` then center-crops.
        crop_fraction: the center-crop fraction for ``crop`` (0.875: 256 -> 224).
        max_pixels: images with more pixels than this are refused before decoding.
    """

    size: tuple[int, int] = (224, 224)
    resize: ResizePolicy = "stretch"
    crop_fraction: float = 0.875
    max_pixels: int = 50_000_000


@dataclass
class Preprocessed:
    pixels: np.ndarray  # (H, W, 3) uint8, RGB
    seconds: float
    source_size: tuple[int, int]  # (width, height) of the encoded image


def _resized_target(width: int, height: int, cfg: PreprocessConfig) -> tuple[int, int]:
    """The (width, height) the image is resized to before any crop."""
    out_h, out_w = cfg.size
    if cfg.resize == "stretch":
        return out_w, out_h
    short = min(width, height)
    scale = (min(out_h, out_w) / cfg.crop_fraction) / short
    return max(out_w, round(width * scale)), max(out_h, round(height * scale))


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit greyscale: scale to 8 bits instead of clipping at 255.
        arr = np.asarray(im, dtype=np.float64)
        peak = 65535.0 if im.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr * (255.0 / peak), 0, 255).astype(np.uint8)
        return Image.fromarray(arr).convert("RGB")
    if im.mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        span = float(arr.max() - arr.min()) or 1.0
        arr = ((arr - arr.min()) * (255.0 / span)).astype(np.uint8)
        return Image.fromarray(arr).convert("RGB")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, im).convert("RGB")
    return im.convert("RGB")


class TooLargeForInline(Exception):  # noqa: N818 - a signal to the caller, not an error
    """``decode``'s header showed more pixels than the caller's ``at_most``."""


def decode(data: bytes, cfg: PreprocessConfig, at_most: int | None = None) -> Preprocessed:
    """Decode, orient, convert and resize one encoded image.

    Args:
        at_most: raise ``TooLargeForInline`` right after reading the header when the image has
            more pixels than this (the caller decodes it elsewhere); None: any size.

    Raises:
        ImageError: with code ``empty``, ``not_an_image``, ``too_many_pixels`` or
            ``corrupt_image``.
    """
    start = time.perf_counter()
    if not data:
        raise ImageError("the image is empty (zero bytes)", "empty")
    # Pillow raises DecompressionBombError for any image past twice this, the header's or one
    # inside the file. One value per process (its one configuration), so no race.
    Image.MAX_IMAGE_PIXELS = cfg.max_pixels // 2
    try:
        im: Image.Image = Image.open(io.BytesIO(data), formats=FORMATS)
        width, height = im.size
        if width <= 0 or height <= 0:
            raise ImageError("the image has no pixels", "corrupt_image")
        if width * height > cfg.max_pixels:
            raise ImageError(
                f"the image is {width}x{height} = {width * height} pixels; "
                f"the limit is {cfg.max_pixels}",
                "too_many_pixels",
            )
        if at_most is not None and width * height > at_most:
            raise TooLargeForInline()
        # EXIF orientation swaps the axes for 5..8; ask the decoder for enough pixels.
        orientation = im.getexif().get(0x0112, 1) if hasattr(im, "getexif") else 1
        target_w, target_h = _resized_target(width, height, cfg)
        if orientation in (5, 6, 7, 8):
            target_w, target_h = target_h, target_w
        if im.format == "JPEG":
            # DCT scaling: decode at 1/2, 1/4 or 1/8 size when that is still >= target.
            im.draft("RGB", (target_w, target_h))
        if getattr(im, "is_animated", False):
            im.seek(0)
        im.load()
        if orientation != 1:  # exif_transpose copies even an upright image
            im = ImageOps.exif_transpose(im) or im
        im = _to_rgb(im)
        w, h = im.size
        tw, th = _resized_target(w, h, cfg)
        if (w, h) != (tw, th):
            im = im.resize((tw, th), Image.Resampling.BILINEAR, reducing_gap=3.0)
        if cfg.resize == "crop":
            out_h, out_w = cfg.size
            left, top = (tw - out_w) // 2, (th - out_h) // 2
            im = im.crop((left, top, left + out_w, top + out_h))
        pixels = np.asarray(im, dtype=np.uint8)
    except (ImageError, TooLargeForInline):
        raise
    except UnidentifiedImageError:
        raise ImageError(
            f"the data is not an image in a supported format ({_NAMES})", "not_an_image"
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        found = re.search(r"\((\d+) pixels\)", str(exc))  # "Image size (N pixels) exceeds ..."
        size = f"{found[1]} pixels" if found else "more pixels than the limit"
        raise ImageError(
            f"the image, or an image or frame inside it, is {size}; the limit is {cfg.max_pixels}",
            "too_many_pixels",
        ) from None
    except MemoryError:
        raise ImageError("the image is too large to decode", "too_many_pixels") from None
    except Exception as exc:
        # Pillow reports truncated or corrupt data with OSError, SyntaxError, ValueError...;
        # anything else it raises on these bytes is still about them, never the server's fault.
        reason = str(exc) or type(exc).__name__
        raise ImageError(f"the image could not be decoded: {reason}", "corrupt_image") from None
    if pixels.shape != (*cfg.size, 3):  # pragma: no cover - defensive
        raise ImageError(f"unexpected decoded shape {pixels.shape}", "corrupt_image")
    return Preprocessed(pixels, time.perf_counter() - start, (width, height))
