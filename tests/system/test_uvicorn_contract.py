"""What ``service/server/http.py`` takes from uvicorn's ``HttpToolsProtocol`` beyond its public
interface: the methods it overrides or calls and the attributes it reads. A uvicorn release
that renames one fails here, by name, before the framing tests show it as odd behaviour (the
dependency is pinned below the next minor version for that reason)."""

from __future__ import annotations

import inspect

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from service.server.http import ServeHttpProtocol

CALLED_OR_OVERRIDDEN = (
    "data_received",
    "on_message_begin",
    "on_url",
    "on_header",
    "on_headers_complete",
    "on_message_complete",
    "send_400_response",
    "connection_lost",
    "_unset_keepalive_if_required",
    "_unsupported_upgrade_warning",
)
# Attributes the protocol sets in __init__ or connection_made and the subclass reads.
ATTRIBUTES = ("self.parser", "self.config", "self.cycle", "self.transport", "self.loop")


def test_the_protocol_methods_the_subclass_relies_on_exist():
    missing = [name for name in CALLED_OR_OVERRIDDEN if not hasattr(HttpToolsProtocol, name)]
    assert missing == []
    assert issubclass(ServeHttpProtocol, HttpToolsProtocol)


def test_the_protocol_attributes_the_subclass_reads_are_set_by_uvicorn():
    source = inspect.getsource(HttpToolsProtocol)
    missing = [a for a in ATTRIBUTES if f"{a} =" not in source and f"{a}: " not in source]
    assert missing == []
    assert "self.logger" in source
    assert "h11_max_incomplete_event_size" in inspect.getsource(
        __import__("uvicorn.config", fromlist=["Config"]).Config
    )


def test_a_response_cycle_still_exposes_its_transport_and_started_flag():
    source = inspect.getsource(RequestResponseCycle)
    assert "self.transport = transport" in source
    assert "self.response_started" in source
