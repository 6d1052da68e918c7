"""Error messages that quote client input are bounded (``service.errors.bounded``)."""

from __future__ import annotations

from service.errors import MESSAGE_LIMIT, bounded


def test_a_short_message_is_kept_whole():
    assert bounded("unknown model 'x'") == "unknown model 'x'"
    exact = "m" * MESSAGE_LIMIT
    assert bounded(exact) == exact


def test_a_long_message_keeps_its_start_and_end():
    message = f"unknown model {'x' * 70_000!r}; this server serves default"
    out = bounded(message)
    assert len(out.encode()) <= MESSAGE_LIMIT
    assert out.startswith("unknown model 'xxx")
    assert out.endswith("'; this server serves default")
    left_out = int(out.split("(")[1].split(" ")[0])
    kept = len(out.encode()) - len(f"... ({left_out} bytes left out) ...")
    assert kept + left_out == len(message.encode())


def test_multibyte_text_is_cut_on_character_boundaries():
    out = bounded("é" * 5000)
    assert len(out.encode()) <= MESSAGE_LIMIT
    out.encode("utf-8", "strict")  # no half characters
    assert out.startswith("éé") and out.endswith("éé")


def test_text_utf8_cannot_carry_is_escaped():
    # A JSON "\ud800" escape decodes to a lone surrogate, which no UTF-8 encoder takes.
    assert bounded('signature "\ud800" not found') == 'signature "\\ud800" not found'
    out = bounded("\udfff" * 5000)
    assert len(out.encode("utf-8", "strict")) <= MESSAGE_LIMIT
    assert out.startswith("\\udfff\\udfff")
