"""The V2, TF Serving and jobs users against a stand-in server on loopback that speaks the
documented protocols (the service's own routes for them are being built separately): the
users send well-formed requests, accept well-formed answers and fail malformed ones."""

from __future__ import annotations

import base64
import csv
import io
import itertools
import json
import threading
from http.server import ThreadingHTTPServer

import pytest
from PIL import Image

from loadtest.suite import runner, shapes
from tests.support.helpers import JsonHandler


class Fake(JsonHandler):
    broken = False
    refuse_jobs = False  # a submit answered 503
    html_polls = False  # a proxy's error page in place of a job's state
    seen: list[tuple[str, str, dict]] = []
    polls: dict[str, int] = {}
    images: dict[str, int] = {}
    ids = itertools.count()

    def do_GET(self):
        if self.path == "/readyz":
            return self.reply(200, {"status": "ready"})
        if self.path == "/metrics":
            return self.reply(200, {})  # not Prometheus text: the scraper must cope
        if self.path == "/v1/models":
            return self.reply(200, {"models": [{"name": "tiny"}]})
        if self.path.startswith("/v1/jobs/"):
            jid = self.path.rsplit("/", 1)[1]
            self.polls[jid] = self.polls.get(jid, 0) + 1
            if self.html_polls:
                page = b"<html>upstream busy</html>"
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(page)))
                self.end_headers()
                self.wfile.write(page)
                return None
            if self.polls[jid] < 2:
                return self.reply(200, {"id": jid, "status": "running"})
            preds = [[{"label": "a", "class_id": 0, "score": 0.9}] * 5] * self.images[jid]
            result = {"model": "tiny", "predictions": [] if self.broken else preds}
            return self.reply(200, {"id": jid, "status": "succeeded", "result": result})
        self.reply(404, {"error": {"code": "not_found", "message": self.path}})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.seen.append((self.path, self.headers.get("Content-Type", ""), body))
        if self.path == "/v2/models/tiny/infer":
            (inp,) = body["inputs"]
            n, k = inp["shape"][0], body["outputs"][0]["parameters"]["classification"]
            out = {
                "name": "probabilities",
                "datatype": "BYTES",
                "shape": [n, k],
                "data": ["0.5:1:cat"] * n * k,
            }
            if self.broken:
                out["data"] = out["data"][:-1]
            return self.reply(200, {"model_name": "tiny", "outputs": [out]})
        if self.path == "/v1/models/tiny:predict":
            preds = [{"scores": [0.5, 0.5]} for _ in body["instances"]]
            return self.reply(200, {"predictions": preds[1:] if self.broken else preds})
        if self.path == "/v1/jobs":
            if self.refuse_jobs:
                return self.reply(503, {"error": {"code": "overloaded", "message": "busy"}})
            jid = f"j{next(self.ids)}"
            self.images[jid] = len(body["images"])
            return self.reply(202, {"id": jid, "status": "queued"})
        self.reply(404, {"error": {"code": "not_found", "message": self.path}})


@pytest.fixture
def fake():
    Fake.seen, Fake.polls, Fake.broken, Fake.html_polls = [], {}, False, False
    Fake.refuse_jobs = False
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Fake)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def run(url, out, tags=("protocols",)):
    cfg = runner.RunConfig(
        host=url,
        out=out,
        params=shapes.ShapeParams(users=3, spawn_rate=10, run_time=3),
        tags=list(tags),
        images_per_request=2,
        think_time=0.05,
    )
    return runner.run(cfg, ready_timeout=10)


def decodes(b64: str) -> tuple[int, int]:
    with Image.open(io.BytesIO(base64.b64decode(b64))) as im:
        im.load()
        return im.size


def test_protocol_users_send_documented_requests_and_accept_good_answers(fake, tmp_path):
    summary = run(fake, tmp_path)
    names = set(summary["endpoints"])
    assert {
        "/v2/models/{name}/infer",
        "/v1/models/{name}:predict",
        "/v1/jobs",
        "/v1/jobs/{id}",
        "job (submit to result)",
    } <= names
    assert summary["totals"]["failures"] == 0, summary["endpoints"]
    paths = {p for p, _, _ in Fake.seen}
    assert paths == {"/v2/models/tiny/infer", "/v1/models/tiny:predict", "/v1/jobs"}
    for path, ctype, body in Fake.seen:
        assert ctype == "application/json"
        if path.startswith("/v2/"):
            (inp,) = body["inputs"]
            assert inp["name"] == "images" and inp["datatype"] == "BYTES"
            assert inp["shape"] == [2] and len(inp["data"]) == 2
            assert body["outputs"] == [
                {"name": "probabilities", "parameters": {"classification": 5}}
            ]
            assert all(decodes(d) for d in inp["data"])
        elif path.endswith(":predict"):
            assert len(body["instances"]) == 2 and all(decodes(i["b64"]) for i in body["instances"])
        else:
            assert len(body["images"]) == 2 and body["top_k"] == 5
    assert all(n >= 2 for n in Fake.polls.values())  # polled until done


def test_malformed_protocol_answers_count_as_failures(fake, tmp_path):
    Fake.broken = True
    summary = run(fake, tmp_path)
    e = summary["endpoints"]
    for name in ("/v2/models/{name}/infer", "/v1/models/{name}:predict", "job (submit to result)"):
        assert e[name]["requests"] > 0 and e[name]["failures"] == e[name]["requests"], name
    failures = (tmp_path / "locust_failures.csv").read_text()
    assert "needs 10" in failures and "expected 2 predictions" in failures
    assert summary["run"]["locust_exit_code"] == 1


def test_a_job_answer_that_is_not_json_counts_as_a_failure(fake, tmp_path):
    """Raised inside the response's block, the error would be reported nowhere."""
    Fake.html_polls = True
    summary = run(fake, tmp_path)
    polls = summary["endpoints"]["/v1/jobs/{id}"]
    assert polls["requests"] > 0 and polls["failures"] == polls["requests"]
    assert "not a JSON object" in (tmp_path / "locust_failures.csv").read_text()


def logged(out) -> list[dict]:
    rows = []
    for path in out.glob("requests*.csv"):
        with path.open() as f:
            rows += list(csv.DictReader(f))
    return rows


def test_the_request_log_counts_jobs_not_their_http_calls(fake, tmp_path):
    """The levels and the capacity search read the request log: a job is one unit of work
    there, however many polls it took."""
    summary = run(fake, tmp_path, tags=("jobs",))
    e = summary["endpoints"]
    jobs = e["job (submit to result)"]
    assert jobs["requests"] > 0 and jobs["failures"] == 0
    assert e["/v1/jobs/{id}"]["requests"] >= 2 * jobs["requests"]  # each polled until done
    rows = logged(tmp_path)
    assert {r["name"] for r in rows} == {"job (submit to result)"}
    assert len(rows) == jobs["requests"]
    assert sum(lv["requests"] for lv in summary["levels"]) <= jobs["requests"]


def test_a_refused_job_submit_fails_the_job(fake, tmp_path):
    Fake.refuse_jobs = True
    summary = run(fake, tmp_path, tags=("jobs",))
    e = summary["endpoints"]
    submits, jobs = e["/v1/jobs"], e["job (submit to result)"]
    assert submits["requests"] > 0 and submits["failures"] == submits["requests"]
    assert jobs["requests"] == jobs["failures"] == submits["requests"]
    assert "/v1/jobs/{id}" not in e
    rows = logged(tmp_path)
    assert len(rows) == jobs["requests"] and not any(r["ok"] == "1" for r in rows)
    assert "HTTP 503: no job id in the answer" in (tmp_path / "locust_failures.csv").read_text()
