"""Errors are logged as one line with the exception type unless tracebacks are switched on."""

import io
import logging

import pytest

from service.logs import configure_logging


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_tracebacks_are_off_by_default_and_on_by_setting(fmt):
    outputs = {}
    for tracebacks in (False, True):
        configure_logging("info", fmt, tracebacks)
        stream = io.StringIO()
        logging.getLogger().handlers[0].setStream(stream)
        try:
            raise ValueError("secret payload fragment")
        except ValueError:
            logging.getLogger("service.test").exception("batch failed, error id %s", "abc123")
        outputs[tracebacks] = stream.getvalue()
    assert "abc123" in outputs[False] and "builtins.ValueError" in outputs[False]
    assert "Traceback" not in outputs[False] and "secret payload" not in outputs[False]
    assert "Traceback" in outputs[True] and "secret payload" in outputs[True]
    logging.getLogger().handlers[:] = []
