"""The real server process: python -m service under uvicorn on a loopback port."""

import httpx


def test_real_server_classifies_a_jpeg(server, jpeg_bytes):
    r = httpx.post(
        server.url + "/v1/classify", content=jpeg_bytes, headers={"content-type": "image/jpeg"}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["predictions"]) == 1
    assert len(body["predictions"][0]) == 5
    assert body["predictions"][0][0]["label"].startswith("class_")
    assert r.headers["x-request-id"]
