"""uvicorn's h11 protocol, answering malformed requests with the service's JSON error shape.

h11 bounds the request head (``h11_max_incomplete_event_size``, ``SERVE_MAX_HEADER_BYTES``);
uvicorn's httptools protocol has no such bound, which is why the service runs on h11. A request
that breaks the parser never reaches the application: uvicorn answers a plain-text 400 itself.
This subclass answers ``{"error": {"code", "message"}}`` instead, with 431 for a head over the
limit, and closes the connection as uvicorn does.
"""

from __future__ import annotations

import json

import h11
from uvicorn.protocols.http.h11_impl import DEFAULT_MAX_INCOMPLETE_EVENT_SIZE, H11Protocol


class JsonErrorH11Protocol(H11Protocol):
    def send_400_response(self, msg: str) -> None:
        limit = self.config.h11_max_incomplete_event_size or DEFAULT_MAX_INCOMPLETE_EVENT_SIZE
        buffered, _ = self.conn.trailing_data
        if len(buffered) > limit:
            status, reason = 431, b"Request Header Fields Too Large"
            body = {
                "code": "header_too_large",
                "message": f"the request line and headers exceed {limit} bytes",
            }
        else:
            status, reason = 400, b"Bad Request"
            body = {"code": "bad_http_request", "message": "the request is not valid HTTP/1.1"}
        payload = json.dumps({"error": body}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
            (b"x-error-code", body["code"].encode()),
            (b"connection", b"close"),
        ]
        try:
            response = h11.Response(status_code=status, headers=headers, reason=reason)
            output = self.conn.send(response)
            output += self.conn.send(h11.Data(data=payload))
            output += self.conn.send(h11.EndOfMessage())
        except h11.LocalProtocolError:  # h11 cannot answer in this state: just close
            output = b""
        if output:
            self.transport.write(output)
        self.transport.close()
