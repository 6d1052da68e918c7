"""Hostile and unusual images over HTTP: each is classified (correctly oriented) or refused with
a clear 4xx JSON error, and the service keeps serving. Multipart limits."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from tests.support.helpers import encode, photo_like


def _png_bomb(width: int, height: int) -> bytes:
    """A valid PNG header for width x height greyscale pixels, with a tiny all-zero stream."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    rows = zlib.compress(b"\x00" * (width + 1) * 64, 9)  # only 64 rows' worth: a lie
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", rows)
        + chunk(b"IEND", b"")
    )


def _jpeg_claiming(width: int, height: int) -> bytes:
    """A small real JPEG whose frame header (SOF0) claims width x height."""
    data = bytearray(encode(photo_like(16, 16), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _save(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _animated(fmt: str) -> bytes:
    frames = [Image.fromarray(photo_like(64, 64, seed=s)) for s in range(3)]
    return _save(frames[0], fmt, save_all=True, append_images=frames[1:], duration=50, loop=0)


RGB = photo_like(96, 128, seed=3)
ACCEPTED = {
    "cmyk_jpeg": lambda: _save(Image.fromarray(RGB).convert("CMYK"), "JPEG"),
    "png_16bit_grey": lambda: _save(
        Image.fromarray((np.arange(96 * 128, dtype=np.uint16) * 5).reshape(96, 128)), "PNG"
    ),
    "png_rgba": lambda: _save(Image.fromarray(RGB).convert("RGBA"), "PNG"),
    "png_la": lambda: _save(Image.fromarray(RGB).convert("LA"), "PNG"),
    "png_palette_transparent": lambda: _save(
        Image.fromarray(RGB).convert("P"), "PNG", transparency=0
    ),
    "png_1bit": lambda: _save(Image.fromarray(RGB).convert("1"), "PNG"),
    "tiff_float": lambda: _save(Image.fromarray(RGB[..., 0].astype(np.float32) / 3), "TIFF"),
    "tiff_cmyk": lambda: _save(Image.fromarray(RGB).convert("CMYK"), "TIFF"),
    "tiff_multipage": lambda: _animated("TIFF"),
    "gif_animated": lambda: _animated("GIF"),
    "webp_animated": lambda: _animated("WEBP"),
    "webp_alpha": lambda: _save(Image.fromarray(RGB).convert("RGBA"), "WEBP", lossless=True),
    "bmp": lambda: _save(Image.fromarray(RGB), "BMP"),
}

REFUSED = {
    "png_bomb_400_megapixels": (lambda: _png_bomb(20_000, 20_000), "too_many_pixels"),
    "jpeg_claiming_65500_square": (lambda: _jpeg_claiming(65500, 65500), "too_many_pixels"),
    "jpeg_claiming_zero_width": (lambda: _jpeg_claiming(0, 16), None),
    "png_truncated": (lambda: encode(RGB, "PNG")[:200], "corrupt_image"),
    "svg_text": (lambda: b"<svg xmlns='http://www.w3.org/2000/svg'></svg>", "not_an_image"),
    "zip_bytes": (lambda: b"PK\x03\x04" + b"\x00" * 100, "not_an_image"),
}


def _post(client, data: bytes):
    return client.post("/v1/classify", content=data, headers={"content-type": "image/png"})


@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_unusual_but_valid_images_are_classified(client, name):
    r = _post(client, ACCEPTED[name]())
    assert r.status_code == 200, r.text
    assert len(r.json()["predictions"][0]) == 5


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_hostile_images_are_refused_with_a_clear_400(client, name):
    make, code = REFUSED[name]
    r = _post(client, make())
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["message"].startswith("image 0:")
    if code:
        assert error["code"] == code
    assert _post(client, ACCEPTED["bmp"]()).status_code == 200  # still serving


def test_exif_orientation_is_applied_before_classification(client):
    """An upright image and the same image stored rotated with an EXIF orientation tag get
    the same answer; the rotated pixels without the tag get a different one."""
    upright = np.zeros((64, 96, 3), np.uint8)
    upright[:16] = 255  # a white band on top: orientation matters to the model
    upright[16:, :48] = (200, 30, 30)
    stored = np.ascontiguousarray(np.rot90(upright, k=1))  # stored rotated 90° CCW
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° CW to display"
    tagged = _save(Image.fromarray(stored), "PNG", exif=exif)

    def scores(data):
        r = _post(client, data)
        assert r.status_code == 200, r.text
        return [p["score"] for p in r.json()["predictions"][0]]

    np.testing.assert_allclose(scores(tagged), scores(encode(upright, "PNG")), atol=1e-4)
    assert not np.allclose(scores(encode(stored, "PNG")), scores(encode(upright, "PNG")))


def _multipart(client, files, data=None):
    return client.post("/v1/classify", files=files, data=data or {})


def test_multipart_with_too_many_files_gets_400(make_client, png_bytes):
    client = make_client(max_images_per_request=3)
    files = [("images", (f"{i}.png", png_bytes, "image/png")) for i in range(10)]
    r = _multipart(client, files)
    assert r.status_code == 400
    assert r.json()["error"]["code"] in ("invalid_multipart", "too_many_images")


def test_multipart_with_too_many_fields_gets_400(make_client, png_bytes):
    client = make_client(max_form_fields=4)
    data = {f"field{i}": "x" for i in range(10)}
    r = _multipart(client, [("images", ("a.png", png_bytes, "image/png"))], data)
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "invalid_multipart"


def test_multipart_field_over_the_part_limit_gets_400(make_client, png_bytes):
    client = make_client(max_form_field_bytes=1024)
    r = _multipart(client, [("images", ("a.png", png_bytes, "image/png"))], {"top_k": "1" * 5000})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "invalid_multipart"
    assert "1111111111111111111111111111111111111" not in r.text  # the field is not echoed
