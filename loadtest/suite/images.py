"""Reproducible sets of real-sized test images, from thumbnails to 12-megapixel photos.

The pictures are smooth gradients with sensor-like noise, so JPEG sizes are close to those of
real photos of the same resolution (a noiseless gradient would compress to almost nothing).
``python -m loadtest images --out DIR`` writes a set and its ``manifest.json``.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import struct
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

# (width, height, share of the set, name) of each size class; ordered small to large.
SIZES: dict[str, tuple[int, int]] = {
    "thumb": (160, 120),
    "qvga": (320, 240),
    "imagenet": (224, 224),
    "vga": (640, 480),
    "hd": (1280, 720),
    "fullhd": (1920, 1080),
    "5mp": (2592, 1944),
    "12mp": (4032, 3024),
}

# Share of each size class per profile. `mixed` roughly follows uploads from phones and web
# pages; `small` keeps to VGA and below so a CI run stays cheap; `tutorial` is the original
# tutorial's single 224x224 image.
PROFILES: dict[str, dict[str, float]] = {
    "mixed": {
        "thumb": 0.10,
        "qvga": 0.10,
        "imagenet": 0.10,
        "vga": 0.25,
        "hd": 0.20,
        "fullhd": 0.13,
        "5mp": 0.07,
        "12mp": 0.05,
    },
    "small": {"thumb": 0.3, "qvga": 0.3, "imagenet": 0.2, "vga": 0.2},
    "tutorial": {"imagenet": 1.0},
}
# Above this many pixels a PNG of a noisy photo is tens of megabytes: large images are JPEG only.
PNG_MAX_PIXELS = 1_000_000
PNG_SHARE = 0.25
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class ImageFile:
    name: str
    size_class: str
    width: int
    height: int
    format: str
    bytes: int
    sha256: str


def photo(width: int, height: int, seed: int) -> np.ndarray:
    """A photo-like RGB array: gradients and waves plus Gaussian noise, reproducible by seed."""
    import numpy as np

    rng = np.random.default_rng(seed)
    # Compute at most ~1 MP of structure and upscale, so 12 MP images take well under a second.
    scale = max(1, int(np.ceil(np.sqrt(width * height / 1_000_000))))
    h, w = -(-height // scale), -(-width // scale)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    f = rng.uniform(8, 40, size=3)
    phase = rng.uniform(0, 2 * np.pi, size=3)
    base = np.stack(
        [
            128 + 90 * np.sin(x / f[0] + phase[0]),
            128 + 90 * np.cos(y / f[1] + phase[1]),
            128 + 70 * np.sin((x + y) / f[2] + phase[2]),
        ],
        axis=-1,
    )
    if scale > 1:
        base = np.repeat(np.repeat(base, scale, axis=0), scale, axis=1)[:height, :width]
    noise = rng.normal(0, 6, size=(height, width, 1)).astype(np.float32)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def encode(array: np.ndarray, fmt: str) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    if fmt == "JPEG":
        Image.fromarray(array).save(buf, "JPEG", quality=88, optimize=False)
    else:
        Image.fromarray(array).save(buf, "PNG", compress_level=6)
    return buf.getvalue()


def plan(count: int, profile: str, seed: int) -> list[tuple[str, str]]:
    """(size class, format) of each image: shares rounded so every class of the profile with a
    share appears at least once when ``count`` allows, in a seeded order."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {sorted(PROFILES)}")
    if count < 1:
        raise ValueError("count must be at least 1")
    shares = PROFILES[profile]
    raw = {c: shares[c] * count for c in shares}
    counts = {c: int(raw[c]) for c in shares}
    floor = 1 if count >= len(shares) else 0  # every class at least once when possible
    counts = {c: max(floor, n) for c, n in counts.items()}
    while sum(counts.values()) < count:  # largest remainder first
        c = max(shares, key=lambda c: raw[c] - counts[c])
        counts[c] += 1
    while sum(counts.values()) > count:
        c = max((c for c in shares if counts[c] > floor), key=lambda c: counts[c] - raw[c])
        counts[c] -= 1
    import numpy as np

    rng = np.random.default_rng(seed)
    items: list[tuple[str, str]] = []
    for c in SIZES:
        for _ in range(counts.get(c, 0)):
            w, h = SIZES[c]
            fmt = "PNG" if w * h <= PNG_MAX_PIXELS and rng.random() < PNG_SHARE else "JPEG"
            items.append((c, fmt))
    order = rng.permutation(len(items))
    return [items[i] for i in order]


def generate(out: Path, count: int = 24, profile: str = "mixed", seed: int = 0) -> list[ImageFile]:
    """Write ``count`` images and ``manifest.json`` into ``out``; same arguments, same bytes."""
    out.mkdir(parents=True, exist_ok=True)
    files: list[ImageFile] = []
    for i, (size_class, fmt) in enumerate(plan(count, profile, seed)):
        w, h = SIZES[size_class]
        data = encode(photo(w, h, seed * 100_003 + i), fmt)
        name = f"{i:04d}-{size_class}-{w}x{h}.{'jpg' if fmt == 'JPEG' else 'png'}"
        (out / name).write_bytes(data)
        files.append(
            ImageFile(name, size_class, w, h, fmt, len(data), hashlib.sha256(data).hexdigest())
        )
    manifest = {
        "profile": profile,
        "seed": seed,
        "count": count,
        "files": [asdict(f) for f in files],
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return files


def ensure(out: Path, count: int, profile: str, seed: int) -> Path:
    """Generate the set into ``out`` unless a manifest with the same parameters is there."""
    manifest = out / MANIFEST
    if manifest.exists():
        meta = json.loads(manifest.read_text())
        if (meta.get("profile"), meta.get("seed"), meta.get("count")) == (profile, seed, count):
            return out
    generate(out, count, profile, seed)
    return out


IMAGE_SUFFIXES = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".webp": "image/webp",
}


def load_folder(folder: Path) -> list[tuple[str, bytes, str]]:
    """(file name, bytes, content type) of every image in ``folder``, sorted by name."""
    found = [
        (p.name, p.read_bytes(), IMAGE_SUFFIXES[p.suffix.lower()])
        for p in sorted(folder.iterdir())
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not found:
        raise FileNotFoundError(f"no .jpg/.jpeg/.png/.webp images in {folder}")
    return found


def pure_png(width: int, height: int, seed: int) -> bytes:
    """A noisy-gradient PNG written with the standard library only, for load generators without
    numpy or Pillow (the stock Locust image in the cluster). Slow above VGA size."""
    rng = random.Random(seed)
    fx, fy = rng.uniform(1, 3), rng.uniform(1, 3)
    rows = bytearray()
    for y in range(height):
        rows.append(0)  # filter: none
        g = int(255 * y / max(1, height - 1) / fy) & 0xFF
        for x in range(width):
            r = int(255 * x / max(1, width - 1) / fx) & 0xFF
            rows += bytes(((r + rng.randrange(24)) & 0xFF, (g + rng.randrange(24)) & 0xFF, 128))

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(bytes(rows), 6))
        + chunk(b"IEND", b"")
    )


def builtin_set(count: int = 8, seed: int = 0) -> list[tuple[str, bytes, str]]:
    """A small in-memory set (thumbnail to VGA): numpy/Pillow JPEG and PNG when installed,
    else standard-library PNGs."""
    try:
        import numpy  # noqa: F401
        import PIL  # noqa: F401
    except ImportError:
        sizes = [SIZES[c] for c in ("thumb", "qvga", "imagenet", "vga")]
        return [
            (f"{i:04d}-{w}x{h}.png", pure_png(w, h, seed + i), "image/png")
            for i, (w, h) in ((i, sizes[i % len(sizes)]) for i in range(count))
        ]
    out = []
    for i, (size_class, fmt) in enumerate(plan(count, "small", seed)):
        w, h = SIZES[size_class]
        data = encode(photo(w, h, seed * 100_003 + i), fmt)
        out.append((f"{i:04d}-{size_class}.{fmt.lower()}", data, f"image/{fmt.lower()}"))
    return out
