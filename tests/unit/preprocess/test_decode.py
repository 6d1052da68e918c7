"""Stage 1: decoding and resizing in the worker, and normalisation equal to Keras's."""

import io
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from service.errors import ImageError
from service.model.normalize import normalize
from service.preprocess import decode as decode_module
from service.preprocess.decode import PreprocessConfig, decode
from tests.support.helpers import encode, photo_like

CFG = PreprocessConfig()


@pytest.mark.parametrize(("module", "mode"), [("resnet50", "caffe"), ("resnet_v2", "tf")])
def test_normalize_equals_keras_preprocess_input(module, mode):
    import importlib

    keras_module = importlib.import_module(f"keras.applications.{module}")
    pixels = decode(encode(photo_like()), CFG).pixels
    expected = keras_module.preprocess_input(pixels.astype(np.float32)[None])[0]
    np.testing.assert_allclose(normalize(pixels, mode), expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize("mode", ["caffe", "tf"])
def test_in_graph_normalize_equals_numpy_normalize(mode):
    from keras import ops

    from service.model.runner import graph_normalize

    pixels = decode(encode(photo_like()), CFG).pixels
    x = ops.cast(ops.convert_to_tensor(pixels[None]), "float32")
    in_graph = ops.convert_to_numpy(graph_normalize(x, mode))[0]
    np.testing.assert_allclose(in_graph, normalize(pixels, mode), rtol=0, atol=1e-4)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF"])
def test_common_formats_decode_to_model_input(fmt):
    out = decode(encode(photo_like(120, 160), fmt), CFG)
    assert out.pixels.shape == (224, 224, 3)
    assert out.pixels.dtype == np.uint8
    assert out.source_size == (160, 120)


def test_stretch_resize_matches_pillow_resize_of_the_same_pixels():
    array = photo_like(300, 400)
    out = decode(encode(array, "PNG"), CFG).pixels
    expected = np.asarray(Image.fromarray(array).resize((224, 224), Image.Resampling.BILINEAR))
    # Pillow's reducing_gap shortcut may differ by a rounding step from a plain resize.
    assert np.abs(out.astype(int) - expected.astype(int)).max() <= 3


def test_crop_policy_keeps_the_center_and_aspect_ratio():
    # Left third red, middle third green, right third blue: a center crop sees mostly green.
    array = np.zeros((256, 768, 3), np.uint8)
    array[:, :256, 0] = 255
    array[:, 256:512, 1] = 255
    array[:, 512:, 2] = 255
    out = decode(encode(array, "PNG"), PreprocessConfig(resize="crop")).pixels
    assert out.shape == (224, 224, 3)
    assert out[:, :, 1].mean() > 240 and out[:, :, 0].mean() < 10 and out[:, :, 2].mean() < 10
    stretched = decode(encode(array, "PNG"), CFG).pixels
    assert stretched[:, :, 0].mean() > 60  # stretch keeps all three bands


def test_large_jpeg_uses_draft_mode_and_decodes_correct_size():
    data = encode(photo_like(3000, 4000), "JPEG", quality=85)
    im = Image.open(io.BytesIO(data))
    im.draft("RGB", (224, 224))
    assert im.size[0] < 4000  # Pillow can DCT-scale this file
    out = decode(data, CFG)
    assert out.pixels.shape == (224, 224, 3)
    assert out.source_size == (4000, 3000)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_exif_orientation_is_applied(fmt):
    array = np.zeros((100, 200, 3), np.uint8)
    array[:, :100] = 255  # left half white
    im = Image.fromarray(array)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    buf = io.BytesIO()
    im.save(buf, fmt, exif=exif.tobytes(), quality=95)
    out = decode(buf.getvalue(), CFG).pixels
    # After a 90 degree clockwise turn, the white half is on top.
    assert out[:100].mean() > 200 and out[124:].mean() < 50


@pytest.mark.parametrize("orientation", [None, 1])
def test_an_upright_image_is_decoded_as_it_is(orientation):
    array = np.zeros((100, 200, 3), np.uint8)
    array[:, :100] = 255  # left half white, and it stays there
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "JPEG", exif=exif.tobytes(), quality=95)
    out = decode(buf.getvalue(), CFG).pixels
    assert out[:, :100].mean() > 200 and out[:, 124:].mean() < 50


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "L", "CMYK", "I;16", "1"])
def test_unusual_modes_become_rgb(mode):
    base = Image.fromarray(photo_like(64, 64))
    if mode == "I;16":
        im = Image.fromarray(np.asarray(base.convert("L"), np.uint16) * 257)
        assert im.mode.startswith("I;16")
        data = io.BytesIO()
        im.save(data, "PNG")
        raw = data.getvalue()
    else:
        im = base.convert(mode)
        fmt = "JPEG" if mode == "CMYK" else "PNG"
        buf = io.BytesIO()
        im.save(buf, fmt)
        raw = buf.getvalue()
    out = decode(raw, CFG).pixels
    assert out.shape == (224, 224, 3)
    assert 20 < out.mean() < 235  # not all black or white: the values were scaled, not clipped


def test_transparent_pixels_become_white():
    im = Image.new("RGBA", (50, 50), (0, 0, 0, 0))
    out = decode(encode(np.asarray(im), "PNG"), CFG).pixels
    assert out.min() == 255


def test_animated_gif_uses_first_frame():
    frames = [Image.new("RGB", (40, 40), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    out = decode(buf.getvalue(), CFG).pixels
    assert out[..., 0].mean() > 200 and out[..., 2].mean() < 50


def test_empty_bytes_are_refused():
    with pytest.raises(ImageError) as err:
        decode(b"", CFG)
    assert err.value.code == "empty"


def test_text_is_not_an_image():
    with pytest.raises(ImageError) as err:
        decode(b"hello, this is not an image", CFG)
    assert err.value.code == "not_an_image"


def test_truncated_jpeg_is_corrupt():
    data = encode(photo_like(), "JPEG")
    with pytest.raises(ImageError) as err:
        decode(data[: len(data) // 2], CFG)
    assert err.value.code == "corrupt_image"


def _png(width: int, height: int, color_type: int, idat: bytes) -> bytes:
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload))
            + kind
            + payload
            + struct.pack(">I", zlib.crc32(kind + payload))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` x ``height``: a decompression bomb's header."""
    return _png(width, height, 2, zlib.compress(b"\x00" * 64))


def test_decompression_bomb_is_refused_before_decoding():
    with pytest.raises(ImageError) as err:
        decode(_png_header_only(100_000, 100_000), CFG)
    assert err.value.code == "too_many_pixels"
    assert "10000000000" in err.value.message


def test_pixel_limit_is_configurable():
    data = encode(photo_like(100, 100), "PNG")
    decode(data, PreprocessConfig(max_pixels=10_000))
    with pytest.raises(ImageError):
        decode(data, PreprocessConfig(max_pixels=9_999))


def test_image_error_survives_pickling():
    import pickle

    err = pickle.loads(pickle.dumps(ImageError("bad", "corrupt_image")))
    assert (err.code, err.message) == ("corrupt_image", "bad")


def _icns(png: bytes) -> bytes:
    """An Apple icon whose one entry (``ic08``, nominally 256x256) is ``png``, of any size."""
    entry = b"ic08" + struct.pack(">I", 8 + len(png)) + png
    return b"icns" + struct.pack(">I", 8 + len(entry)) + entry


def _saved(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(buf, fmt)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["ICO", "ICNS", "PPM", "TGA", "PCX", "DDS", "SGI", "IM"])
def test_formats_the_service_does_not_take_are_refused_naming_those_it_does(fmt):
    with pytest.raises(ImageError) as err:
        decode(_saved(fmt), CFG)
    assert err.value.code == "not_an_image"
    assert "(JPEG, PNG, WebP, GIF, BMP or TIFF)" in err.value.message


def _grey_png(width: int, height: int) -> bytes:
    """A black greyscale PNG, small on the wire whatever its size."""
    packer = zlib.compressobj(9)
    row = b"\x00" * (width + 1)
    return _png(
        width, height, 0, b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    )


def test_a_large_image_inside_a_small_icon_is_refused_at_once():
    # The icon's header says 256x256; its PNG is 8000x8000 (64 MP, over the 50 MP limit).
    data = _icns(_grey_png(8000, 8000))
    start = time.perf_counter()
    with pytest.raises(ImageError) as err:
        decode(data, CFG)
    assert err.value.code == "not_an_image"
    assert time.perf_counter() - start < 0.5


def test_pillows_own_check_holds_images_inside_a_file_to_the_limit(monkeypatch):
    # With a format that holds further images allowed, the limit still applies to those.
    monkeypatch.setattr(decode_module, "FORMATS", (*decode_module.FORMATS, "ICNS"))
    small = PreprocessConfig(max_pixels=100_000)  # the header's 256x256 passes
    inner = encode(np.zeros((400, 400, 3), np.uint8), "PNG")
    with pytest.raises(ImageError) as err:
        decode(_icns(inner), small)
    assert err.value.code == "too_many_pixels"
    assert "160000 pixels; the limit is 100000" in err.value.message


@pytest.mark.parametrize(
    "exc", [NotImplementedError("no"), AttributeError("x"), KeyError("k"), ZeroDivisionError()]
)
def test_anything_pillow_raises_on_the_bytes_is_a_corrupt_image(monkeypatch, exc):
    def broken(self):
        raise exc

    monkeypatch.setattr(ImageFile.ImageFile, "load", broken)
    with pytest.raises(ImageError) as err:
        decode(encode(photo_like(60, 80), "PNG"), CFG)
    assert err.value.code == "corrupt_image"
    assert err.value.message.startswith("the image could not be decoded: ")
