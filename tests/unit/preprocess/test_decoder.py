"""Where a front end decodes: small images on its event loop, larger ones in its decode thread."""

import asyncio
import threading

import pytest

from service.errors import ImageError
from service.preprocess.decode import PreprocessConfig, TooLargeForInline, decode
from service.preprocess.decoder import Decoder
from service.settings import INLINE_DECODE_PIXELS, Settings
from tests.support.helpers import encode, photo_like

CFG = PreprocessConfig()
SMALL = encode(photo_like(224, 224))  # 50,176 pixels
LARGE = encode(photo_like(480, 640))  # 307,200 pixels


def decode_while_the_thread_is_held(inline_pixels: int, data: bytes) -> tuple[bool, object]:
    """Decode ``data`` while the decoder's thread is busy: (whether it finished before the
    thread was released, its pixels' shape)."""
    decoder = Decoder(inline_pixels=inline_pixels)

    async def go() -> tuple[bool, object]:
        held = threading.Event()
        decoder._executor.submit(held.wait, 10)
        task = asyncio.ensure_future(decoder.decode(data, CFG))
        await asyncio.sleep(0.3)
        finished_while_held = task.done()
        held.set()
        return finished_while_held, (await task).pixels.shape

    try:
        return asyncio.run(go())
    finally:
        decoder.close()


@pytest.mark.parametrize(
    ("inline_pixels", "data", "on_the_loop"),
    [
        (100_000, SMALL, True),  # within the limit: decoded without the thread
        (100_000, LARGE, False),  # larger: waits for the decode thread
        (0, SMALL, False),  # no limit: every image goes to the thread
    ],
)
def test_images_within_the_limit_decode_on_the_loop_the_rest_in_the_thread(
    inline_pixels, data, on_the_loop
):
    done, shape = decode_while_the_thread_is_held(inline_pixels, data)
    assert done is on_the_loop and shape == (224, 224, 3)


@pytest.mark.parametrize("inline_pixels", [0, 100_000, 10_000_000])
def test_a_bad_image_is_the_same_client_error_either_way(inline_pixels):
    decoder = Decoder(inline_pixels=inline_pixels)
    try:
        with pytest.raises(ImageError) as caught:
            asyncio.run(decoder.decode(SMALL[: len(SMALL) // 2], CFG))
        with pytest.raises(ImageError) as empty:
            asyncio.run(decoder.decode(b"", CFG))
    finally:
        decoder.close()
    assert caught.value.code == "corrupt_image" and empty.value.code == "empty"


def test_the_header_decides_before_any_pixel_is_decoded():
    with pytest.raises(TooLargeForInline):
        decode(LARGE, CFG, at_most=307_199)
    assert decode(LARGE, CFG, at_most=307_200).pixels.shape == (224, 224, 3)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"SERVE_CPUS": "2"}, INLINE_DECODE_PIXELS),  # a front end per core (the default)
        ({"SERVE_CPUS": "4", "SERVE_FRONTEND_PROCESSES": "4"}, INLINE_DECODE_PIXELS),
        ({"SERVE_CPUS": "4", "SERVE_FRONTEND_PROCESSES": "2"}, 0),  # the thread is worth a core
        ({"SERVE_CPUS": "4", "SERVE_DECODE_INLINE_PIXELS": "0"}, 0),
        (
            {"SERVE_CPUS": "4", "SERVE_FRONTEND_PROCESSES": "1", "SERVE_DECODE_INLINE_PIXELS": "7"},
            7,
        ),
    ],
)
def test_the_automatic_limit_follows_the_front_ends_per_core(monkeypatch, env, expected):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert Settings().inline_decode_pixels == expected
