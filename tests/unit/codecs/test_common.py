"""What every codec shares: bounded JSON, base64, top_k, compressed bodies, pixel values."""

import base64
import gzip
import zlib

import numpy as np
import pytest

from service.codecs.common import (
    MAX_JSON_DEPTH,
    decode_b64,
    decompress,
    parse_json,
    parse_top_k,
    to_pixels,
)
from service.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType


def test_json_is_parsed_when_valid():
    assert parse_json(b'{"a": [1, 2]}') == {"a": [1, 2]}


def test_malformed_json_is_refused_in_the_callers_words():
    with pytest.raises(InvalidInput) as exc:
        parse_json(b"{nope", "the header", "bad_header", "{what} broke: {exc}")
    assert exc.value.status == 400 and exc.value.code == "bad_header"
    assert exc.value.message.startswith("the header broke: Expecting property name")


def test_json_nested_deeper_than_the_limit_is_refused_before_use():
    ok = b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH
    assert parse_json(ok) is not None
    deep = b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1)
    with pytest.raises(InvalidInput, match=f"nested deeper than {MAX_JSON_DEPTH} levels"):
        parse_json(deep)


def test_json_too_deep_for_the_parser_is_refused_not_crashed():
    with pytest.raises(InvalidInput, match="nested too deeply") as exc:
        parse_json(b"[" * 100_000)
    assert exc.value.code == "invalid_json"


def test_an_integer_past_pythons_digit_limit_is_refused_in_the_callers_words():
    with pytest.raises(InvalidInput) as exc:
        parse_json(b"[1" + b"0" * 5000 + b"]", "the header", "bad_header", "{what} broke: {exc}")
    assert exc.value.status == 400 and exc.value.code == "bad_header"
    assert exc.value.message == "the header broke: an integer has more than 4300 digits"


def test_non_utf8_json_is_refused():
    with pytest.raises(InvalidInput, match="not valid JSON"):
        parse_json(b'"\xff\xfe"')


@pytest.mark.parametrize(("value", "k"), [(None, 5), ("", 5), ("1", 1), ("1000", 1000), (7, 7)])
def test_top_k_takes_the_value_or_the_default(value, k):
    assert parse_top_k(value, 5) == k


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "between 1 and 1000, got 0"),
        ("1001", "between 1 and 1000, got 1001"),
        ("five", "must be an integer, got 'five'"),
    ],
)
def test_top_k_out_of_range_or_not_a_number_is_refused(value, message):
    with pytest.raises(InvalidInput, match=message) as exc:
        parse_top_k(value, 5)
    assert exc.value.code == "invalid_top_k"


def test_a_huge_top_k_field_is_not_echoed_back():
    with pytest.raises(InvalidInput) as exc:
        parse_top_k("x" * 10_000, 5)
    assert len(exc.value.message) < 100


def test_base64_and_data_urls_decode():
    assert decode_b64(base64.b64encode(b"png!").decode(), "image") == b"png!"
    assert decode_b64("data:image/png;base64," + base64.b64encode(b"x").decode(), "i") == b"x"


def test_invalid_base64_names_where_it_was():
    with pytest.raises(InvalidInput, match=r"images\[2\].b64 is not valid base64") as exc:
        decode_b64("@@not base64@@", "images[2].b64")
    assert exc.value.code == "invalid_base64"


def test_gzip_and_deflate_bodies_are_inflated():
    body = b'{"inputs": []}' * 10
    assert decompress(gzip.compress(body), "gzip", 1000) == body
    assert decompress(zlib.compress(body), "deflate", 1000) == body
    assert decompress(body, None, 1) is body and decompress(body, "identity", 1) is body


def test_an_unknown_content_encoding_is_415():
    with pytest.raises(UnsupportedMediaType, match="'br' is not supported") as exc:
        decompress(b"x", "br", 100)
    assert exc.value.status == 415 and exc.value.code == "unsupported_encoding"


def test_a_corrupt_compressed_body_is_400():
    with pytest.raises(InvalidInput, match="the gzip body is corrupt") as exc:
        decompress(b"not gzip at all", "gzip", 100)
    assert exc.value.code == "invalid_encoding"


def test_a_body_that_inflates_past_the_limit_is_413():
    with pytest.raises(PayloadTooLarge, match="exceeds 1000 bytes") as exc:
        decompress(gzip.compress(b"\0" * 100_000), "gzip", 1000)
    assert exc.value.status == 413


def test_pixels_are_rounded_to_uint8():
    out = to_pixels(np.array([0.0, 127.6, 255.0]))
    assert out.dtype == np.uint8 and out.tolist() == [0, 128, 255]


@pytest.mark.parametrize("bad", [-1.0, 255.5, float("nan"), float("inf")])
def test_pixels_outside_0_255_are_refused_with_the_tensors_name(bad):
    with pytest.raises(InvalidInput, match="input 'pixels': pixel values must be RGB") as exc:
        to_pixels(np.array([1.0, bad]), "input 'pixels': ", "bad_pixels")
    assert exc.value.code == "bad_pixels"
