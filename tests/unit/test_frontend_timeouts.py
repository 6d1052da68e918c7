"""The front end's uvicorn timeouts are the settings' own, fractions of a second included."""

from __future__ import annotations

import uvicorn

from service.server.frontend import server_timeouts
from service.settings import Settings


def test_a_fractional_graceful_timeout_is_not_rounded_down_to_none():
    settings = Settings(graceful_timeout_s=0.5, keepalive_timeout_s=1.5)
    config = uvicorn.Config(lambda: None, **server_timeouts(settings))
    assert config.timeout_graceful_shutdown == 0.5  # int(0.5): cancel at once
    assert config.timeout_keep_alive == 1.5
