"""Authentication (API keys / bearer tokens) and CORS."""

from __future__ import annotations

import hmac

import pytest

from service import auth
from service.app import create_app
from service.settings import Settings

TOKEN = "s3cret-token-value"


def _classify(client, jpeg_bytes, headers=None):
    return client.post(
        "/v1/classify",
        content=jpeg_bytes,
        headers={"content-type": "image/jpeg", **(headers or {})},
    )


def test_authentication_is_off_by_default(client, jpeg_bytes):
    assert _classify(client, jpeg_bytes).status_code == 200


@pytest.fixture
def authed(make_client):
    return make_client(auth_tokens=f"{TOKEN},other-token")


def test_a_request_without_a_token_gets_401_json(authed, jpeg_bytes):
    r = _classify(authed, jpeg_bytes)
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "unauthorized"
    assert r.headers["www-authenticate"] == "Bearer"
    assert r.headers["x-request-id"]


def test_refusals_are_counted_under_a_route_of_their_own(authed, jpeg_bytes):
    """Not under ``unmatched``, which dashboards leave out as scans of unknown paths."""
    _classify(authed, jpeg_bytes)
    _classify(authed, jpeg_bytes, {"Authorization": "Bearer wrong"})
    text = authed.get("/metrics").text
    for reason in ("unauthorized", "invalid_token"):
        line = f'serve_request_failure_total{{protocol="http",reason="{reason}",route="auth"}}'
        assert line in text, reason


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Basic {TOKEN}"},
        {"X-API-Key": TOKEN[:-1]},
        {"Authorization": f"Bearer {TOKEN}x"},
    ],
)
def test_a_wrong_token_gets_401(authed, jpeg_bytes, headers):
    r = _classify(authed, jpeg_bytes, headers)
    assert r.status_code == 401
    assert TOKEN not in r.text


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": f"Bearer {TOKEN}"},
        {"Authorization": f"bearer {TOKEN}"},
        {"X-API-Key": TOKEN},
        {"X-API-Key": "other-token"},
    ],
)
def test_a_valid_token_is_served(authed, jpeg_bytes, headers):
    assert _classify(authed, jpeg_bytes, headers).status_code == 200


def test_probes_and_metrics_are_exempt(authed):
    for path in ("/healthz", "/readyz", "/metrics"):
        assert authed.get(path).status_code == 200, path
    assert authed.get("/v1/models").status_code == 401
    assert authed.get("/openapi.json").status_code == 401


def test_the_exempt_paths_are_a_setting(make_client):
    client = make_client(auth_tokens=TOKEN, auth_exempt_paths="/healthz,/readyz")
    assert client.get("/healthz").status_code == 200
    assert client.get("/metrics").status_code == 401


def test_the_token_is_checked_before_the_body_is_read(make_client):
    client = make_client(auth_tokens=TOKEN, max_body_bytes=10)
    r = client.post("/v1/classify", content=b"x" * 1000, headers={"content-type": "image/jpeg"})
    assert r.status_code == 401  # not 413: the body was never read


def test_tokens_from_a_file(make_client, jpeg_bytes, tmp_path):
    path = tmp_path / "tokens"
    path.write_text("# mounted from a Secret\n\nfile-token-1\n  file-token-2  \n")
    client = make_client(auth_tokens_file=str(path))
    assert _classify(client, jpeg_bytes).status_code == 401
    assert _classify(client, jpeg_bytes, {"X-API-Key": "file-token-2"}).status_code == 200
    assert _classify(client, jpeg_bytes, {"X-API-Key": "# mounted"}).status_code == 401


@pytest.mark.parametrize("content", [None, "# only a comment\n"])
def test_an_unusable_tokens_file_stops_the_start(tmp_path, content):
    path = tmp_path / "tokens"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ValueError, match="SERVE_AUTH_TOKENS_FILE"):
        create_app(Settings(auth_tokens_file=str(path)))


def test_every_token_is_compared_whatever_matched(monkeypatch):
    calls = []
    real = hmac.compare_digest

    def counting(a, b):
        calls.append(b)
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", counting)
    tokens = [b"first", b"second", b"third"]
    assert auth.token_matches(b"first", tokens)
    assert calls == tokens
    calls.clear()
    assert not auth.token_matches(b"nope", tokens)
    assert calls == tokens


def test_tokens_are_not_shown_in_the_settings_repr():
    assert TOKEN not in repr(Settings(auth_tokens=TOKEN))


def test_cors_is_off_unless_configured(client):
    r = client.get("/healthz", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in r.headers
    preflight = client.options(
        "/v1/classify",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in preflight.headers


def test_cors_allows_only_the_configured_origins(make_client):
    client = make_client(cors_origins="https://app.example", auth_tokens=TOKEN)
    ok = client.options(
        "/v1/classify",
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )
    assert ok.status_code == 200  # preflights carry no token
    assert ok.headers["access-control-allow-origin"] == "https://app.example"
    bad = client.options(
        "/v1/classify",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert bad.status_code == 400
    assert "access-control-allow-origin" not in bad.headers
    r = client.get("/healthz", headers={"Origin": "https://app.example"})
    assert r.headers["access-control-allow-origin"] == "https://app.example"
    assert "x-request-id" in r.headers["access-control-expose-headers"].lower()
    cancel = client.options(  # a browser may cancel a job
        "/v1/jobs/abc",
        headers={"Origin": "https://app.example", "Access-Control-Request-Method": "DELETE"},
    )
    assert cancel.status_code == 200
    assert "DELETE" in cancel.headers["access-control-allow-methods"]
