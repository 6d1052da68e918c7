"""The pod's processes, on a real server with two front ends and one accelerator process:
batches and the admission bound span the front ends, metrics and jobs are one view of the
pod, a killed front end is replaced, a killed accelerator process makes the pod not ready
until it is back."""

from __future__ import annotations

import collections
import contextlib
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest

from loadtest.bench.spread import connections_by_frontend
from tests.support.harness import engine, frontend_of, frontends
from tests.support.helpers import encode, metric_value, photo_like, start_server, stop_server

JPEG = {"content-type": "image/jpeg"}


@pytest.fixture(scope="module")
def held_server(tiny_model_file, tmp_path_factory) -> Iterator:
    """Partial batches are held up to 1.5 s (so that items from both front ends meet in one)
    and at most 2 images may be in flight in the pod."""
    srv = start_server(
        {
            "SERVE_WEIGHTS": str(tiny_model_file),
            "SERVE_MAX_BATCH_SIZE": "4",
            "SERVE_BATCH_BUCKETS": "1,2,4",
            "SERVE_MAX_BATCH_DELAY_MS": "1500",
            "SERVE_MAX_QUEUE_IMAGES": "2",
            "SERVE_MODEL_INSTANCES": "1",
        },
        tmp_path_factory.mktemp("held") / "server.log",
    )
    yield srv
    stop_server(srv)


def connections_on_each_frontend(url: str, pids: list[int]) -> dict[int, socket.socket]:
    """One open connection held by each front end (the kernel picks; open until it has)."""
    parts = urlsplit(url)
    _wait_listening(pids, parts.port)
    chosen: dict[int, socket.socket] = {}
    spare = []
    for _ in range(64):
        sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")  # accepted and served
        _answer(sock)  # all of it: a body left unread would be taken for the next answer
        owner = frontend_of(sock, pids)
        if owner is not None and owner not in chosen:
            chosen[owner] = sock
        else:
            spare.append(sock)
        if len(chosen) == len(pids):
            break
    for sock in spare:
        sock.close()
    assert len(chosen) == len(pids), "the connections never reached every front end"
    return chosen


def _wait_listening(pids: list[int], port: int | None, timeout: float = 60) -> None:
    """Until each of ``pids`` listens on ``port`` (a front end just started may not yet)."""
    import psutil

    deadline = time.monotonic() + timeout
    for pid in pids:
        while not any(
            c.status == psutil.CONN_LISTEN and c.laddr.port == port
            for c in psutil.Process(pid).net_connections("tcp")
        ):
            assert time.monotonic() < deadline, f"front end {pid} does not listen on {port}"
            time.sleep(0.1)


def _replaced(srv, victim: int, count: int = 2, timeout: float = 60) -> list[int]:  # type: ignore[no-untyped-def]
    """The front ends once ``victim`` is gone and another runs in its place."""
    deadline = time.monotonic() + timeout
    while len(after := frontends(srv.process.pid)) < count or victim in after:
        assert time.monotonic() < deadline, srv.log()[-3000:]
        time.sleep(0.1)
    return after


def post(sock: socket.socket, body: bytes, path: str = "/v1/classify") -> tuple[int, dict]:
    sock.sendall(
        b"POST %s HTTP/1.1\r\nHost: t\r\nContent-Type: image/jpeg\r\n"
        b"Content-Length: %d\r\n\r\n" % (path.encode(), len(body)) + body
    )
    return _answer(sock)


def _answer(sock: socket.socket) -> tuple[int, dict]:
    """One response with a Content-Length JSON body: (status, body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    length = next(
        int(x.split(b":")[1]) for x in lines[1:] if x.lower().startswith(b"content-length")
    )
    while len(rest) < length:
        rest += sock.recv(65536)
    return int(lines[0].split()[1]), json.loads(rest[:length])


def test_a_batch_fills_from_every_front_end(held_server):
    pids = frontends(held_server.process.pid)
    assert len(pids) == 2
    socks = connections_on_each_frontend(held_server.url, pids)
    image = encode(photo_like(40, 40))
    answers: dict[int, tuple[int, dict]] = {}

    def send(pid: int) -> None:
        answers[pid] = post(socks[pid], image)

    threads = [threading.Thread(target=send, args=(pid,)) for pid in pids]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for sock in socks.values():
        sock.close()
    assert [a[0] for a in answers.values()] == [200, 200], answers
    # One batch of two: one image from each front end, in the accelerator process's batcher.
    assert [a[1]["timing"]["batch_sizes"] for a in answers.values()] == [[2], [2]]


def test_grpc_and_http_calls_share_a_batch(held_server):
    import numpy as np
    import tritonclient.grpc as grpcclient

    pids = frontends(held_server.process.pid)
    sock = next(iter(connections_on_each_frontend(held_server.url, pids).values()))
    tensor = grpcclient.InferInput("pixels", [1, 32, 32, 3], "UINT8")
    tensor.set_data_from_numpy(np.zeros((1, 32, 32, 3), np.uint8))
    answers: dict[str, object] = {}

    def over_grpc() -> None:
        with grpcclient.InferenceServerClient(held_server.grpc) as client:
            answers["grpc"] = client.infer("resnet50", [tensor]).as_numpy("probabilities")

    sender = threading.Thread(target=over_grpc)
    sender.start()
    answers["http"] = post(sock, encode(photo_like(40, 40)))
    sender.join(30)
    sock.close()
    status, body = answers["http"]
    assert status == 200, body
    # The partial batch waited (1.5 s) and took the other protocol's image.
    assert body["timing"]["batch_sizes"] == [2]
    assert answers["grpc"].shape == (1, 10)


def test_the_admission_bound_is_one_bound_for_the_pod(held_server):
    pids = frontends(held_server.process.pid)
    socks = connections_on_each_frontend(held_server.url, pids)
    first, second = pids
    image = encode(photo_like(40, 40))
    held: list[tuple[int, dict]] = []
    # Two images admitted through the first front end wait in a partial batch (1.5 s): the
    # pod's bound (2) is reached, whichever front end the next request reaches.
    sender = threading.Thread(target=lambda: held.append(_two(socks[first], image)))
    sender.start()
    time.sleep(0.5)
    status, body = post(socks[second], image)
    sender.join(30)
    for sock in socks.values():
        sock.close()
    assert status == 503 and body["error"]["code"] == "overloaded", body
    assert [s for s, _ in held] == [200], held


def _two(sock: socket.socket, image: bytes) -> tuple[int, dict]:
    """One multipart request with two images (two images admitted at once)."""
    boundary = b"b0undary"
    parts = b"".join(
        b'--%s\r\nContent-Disposition: form-data; name="images"; filename="%d.jpg"\r\n'
        b"Content-Type: image/jpeg\r\n\r\n%s\r\n" % (boundary, i, image)
        for i in range(2)
    )
    body = parts + b"--%s--\r\n" % boundary
    sock.sendall(
        b"POST /v1/classify HTTP/1.1\r\nHost: t\r\n"
        b"Content-Type: multipart/form-data; boundary=%s\r\nContent-Length: %d\r\n\r\n"
        % (boundary, len(body))
        + body
    )
    return _answer(sock)


def test_metrics_are_one_view_of_every_process(server):
    """Counters summed over the front ends and the accelerator process, in any scrape."""

    name = 'serve_request_success_total{protocol="http",route="/v1/classify"}'
    before = httpx.get(server.url + "/metrics").text
    image = encode(photo_like(48, 48))
    for _ in range(12):  # new connections: the kernel spreads them over the front ends
        with httpx.Client() as client:
            assert client.post(server.url + "/v1/classify", content=image, headers=JPEG).is_success
    scrapes = [httpx.get(server.url + "/metrics").text for _ in range(4)]
    for text in scrapes:
        assert metric_value(text, name) - metric_value(before, name) == 12
        assert (
            metric_value(text, "serve_inference_count_total")
            - metric_value(before, "serve_inference_count_total")
            == 12
        )
        assert "serve_runner_busy_ratio" in text and metric_value(text, "serve_ready") == 1.0


def test_a_job_submitted_on_one_front_end_is_seen_by_every_other(server):
    pids = frontends(server.process.pid)
    socks = connections_on_each_frontend(server.url, pids)
    first, second = pids
    status, job = post(socks[first], encode(photo_like(40, 40)), "/v1/jobs")
    assert status == 202, job
    deadline = time.monotonic() + 60
    while True:
        socks[second].sendall(b"GET /v1/jobs/%s HTTP/1.1\r\nHost: t\r\n\r\n" % job["id"].encode())
        status, state = _answer(socks[second])
        assert status == 200, state
        if state["status"] == "succeeded":
            break
        assert time.monotonic() < deadline, state
        time.sleep(0.1)
    for sock in socks.values():
        sock.close()
    assert len(state["result"]["predictions"]) == 1


def _closed_loop(url: str, seconds: float, users: int) -> list:
    """(status or exception name, seconds, user) of each request of ``users`` keep-alive
    clients."""
    image = encode(photo_like(64, 64))
    outcomes: list = []
    stop = time.monotonic() + seconds

    def user(index: int) -> None:
        with httpx.Client(timeout=30) as client:
            while time.monotonic() < stop:
                start = time.monotonic()
                try:
                    r = client.post(url + "/v1/classify", content=image, headers=JPEG)
                    outcomes.append((r.status_code, time.monotonic() - start, index))
                except httpx.HTTPError as exc:
                    outcomes.append((type(exc).__name__, time.monotonic() - start, index))

    threads = [threading.Thread(target=user, args=(i,)) for i in range(users)]
    for t in threads:
        t.start()
    return [threads, outcomes]


def test_new_connections_spread_over_the_front_ends_busy_or_not(tiny_model_file, tmp_path):
    # Three of four front ends stopped while 256 clients connect, as if busy: on one shared
    # listening socket the free one would take them all and keep them, and the three would
    # wait idle behind their share of nothing once free. Each front end listens on its own
    # socket, and the kernel hashes every connection to one of them.
    srv = start_server(
        {"SERVE_WEIGHTS": str(tiny_model_file), "SERVE_FRONTEND_PROCESSES": "4"},
        tmp_path / "log",
    )
    parts = urlsplit(srv.url)
    socks: list[socket.socket] = []
    try:
        pids = frontends(srv.process.pid)
        assert len(pids) == 4
        _wait_listening(pids, parts.port)  # ready is one front end ready
        for pid in pids[1:]:
            os.kill(pid, signal.SIGSTOP)
        try:
            for _ in range(256):
                socks.append(sock := socket.create_connection((parts.hostname, parts.port), 30))
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            time.sleep(2.0)  # time for the free one to accept all it can
        finally:
            for pid in pids[1:]:
                os.kill(pid, signal.SIGCONT)
        for sock in socks:
            assert _answer(sock)[0] == 200  # every connection accepted and served
        counts = connections_by_frontend(srv.process.pid, parts.port)
        assert len(counts) == 4 and sum(counts) == 256, counts
        # 64 each on average; fewer than half of that is 4.6 standard deviations away.
        assert min(counts) >= 32, counts
    finally:
        for sock in socks:
            sock.close()
        stop_server(srv)


def test_a_killed_front_end_is_replaced_and_only_its_own_requests_fail(tiny_model_file, tmp_path):
    srv = start_server({"SERVE_WEIGHTS": str(tiny_model_file)}, tmp_path / "log")
    try:
        before = frontends(srv.process.pid)
        threads, outcomes = _closed_loop(srv.url, 4.0, 6)
        time.sleep(1.5)
        victim = before[0]
        os.kill(victim, signal.SIGKILL)
        for t in threads:
            t.join(30)
        after = _replaced(srv, victim)
        assert before[1] in after
        connections_on_each_frontend(srv.url, after)  # the new one listens on the port too
        ok = sum(1 for status, *_ in outcomes if status == 200)
        failed = [(status, user) for status, _, user in outcomes if status != 200]
        # Only connections the dead process held break (no HTTP answer at all); nothing else.
        assert ok > 20 and all(isinstance(s, str) for s, _ in failed), failed
        # A user's connection to it, and at most the one it opened at once in its place: the
        # kernel may still hash that to the dying process's listening socket, which resets it.
        per_user = collections.Counter(user for _, user in failed)
        assert all(n <= 2 for n in per_user.values()), failed
        assert httpx.get(srv.url + "/readyz").status_code == 200
        r = httpx.post(srv.url + "/v1/classify", content=encode(photo_like(40, 40)), headers=JPEG)
        assert r.status_code == 200
    finally:
        stop_server(srv)


@pytest.fixture(scope="module")
def stall_server(tiny_model_file, tmp_path_factory) -> Iterator:
    """A front end silent for 3 s is killed and replaced."""
    srv = start_server(
        {"SERVE_WEIGHTS": str(tiny_model_file), "SERVE_FRONTEND_STALL_S": "3"},
        tmp_path_factory.mktemp("stall") / "server.log",
    )
    yield srv
    stop_server(srv)


def test_a_front_end_whose_event_loop_stopped_is_killed_and_replaced(stall_server):
    # Stopped, it still holds its listening socket, and the kernel would go on handing it a
    # share of the new connections that nobody answers.
    srv = stall_server
    before = frontends(srv.process.pid)
    victim = before[0]
    time.sleep(0.5)  # past its first beat: a front end is judged from then on
    os.kill(victim, signal.SIGSTOP)
    stopped = time.monotonic()
    after = _replaced(srv, victim, timeout=30)
    assert time.monotonic() - stopped >= 3  # not before its loop stalled that long
    assert before[1] in after  # the one that kept turning was left alone
    assert f"(pid {victim}): its event loop has not turned for" in srv.log()
    assert httpx.get(srv.url + "/readyz").status_code == 200
    connections_on_each_frontend(srv.url, after)  # the new one takes connections
    time.sleep(4)  # beats keep the live ones alive
    assert frontends(srv.process.pid) == after


def test_a_pod_paused_as_a_whole_keeps_its_front_ends(stall_server):
    # Every process stopped past the stall limit (a frozen container), the supervisor resumed
    # first: its front ends' beats are old, but they were no more stalled than it was.
    srv = stall_server
    before = frontends(srv.process.pid)
    everyone = [srv.process.pid, *before, engine(srv.process.pid)]
    logged = len(srv.log())
    time.sleep(0.5)  # past the front ends' first beats
    for pid in everyone:
        os.kill(pid, signal.SIGSTOP)
    time.sleep(6)
    for pid in everyone:
        os.kill(pid, signal.SIGCONT)
    time.sleep(5)
    assert frontends(srv.process.pid) == before, srv.log()[-3000:]
    assert "has not turned" not in srv.log()[logged:]
    assert httpx.get(srv.url + "/readyz").status_code == 200


def test_a_killed_accelerator_process_makes_the_pod_not_ready_until_it_is_back(
    tiny_model_file, tmp_path
):
    srv = start_server({"SERVE_WEIGHTS": str(tiny_model_file)}, tmp_path / "log")
    try:
        first = engine(srv.process.pid)
        assert first is not None
        os.kill(first, signal.SIGKILL)
        start = time.monotonic()
        # Not ready at once, and inference refused at once (no hang) while it is away.
        while httpx.get(srv.url + "/readyz").status_code == 200:
            assert time.monotonic() - start < 5, "still ready with no accelerator process"
            time.sleep(0.05)
        r = httpx.post(
            srv.url + "/v1/classify", content=encode(photo_like(40, 40)), headers=JPEG, timeout=10
        )
        assert r.status_code == 503 and r.headers["retry-after"]
        assert r.json()["error"]["code"] in ("not_ready", "engine_unavailable")
        assert httpx.get(srv.url + "/healthz").status_code == 200  # restarting, not dead
        # Restarted by the supervisor, warmed, and ready again.
        while httpx.get(srv.url + "/readyz").status_code != 200:
            assert time.monotonic() - start < 120, srv.log()[-2000:]
            time.sleep(0.2)
        assert engine(srv.process.pid) not in (None, first)
        r = httpx.post(srv.url + "/v1/classify", content=encode(photo_like(40, 40)), headers=JPEG)
        assert r.status_code == 200
    finally:
        stop_server(srv)


def _kill_each_new_one(srv, find, times: int) -> None:  # type: ignore[no-untyped-def]
    """SIGKILL the process ``find(supervisor_pid)`` names, ``times`` times, each time as soon
    as a new one (not killed before) is there."""
    killed: set[int] = set()
    for _ in range(times):
        deadline = time.monotonic() + 60
        while not (new := set(find(srv.process.pid)) - killed):
            assert srv.process.poll() is None, srv.log()[-2000:]
            assert time.monotonic() < deadline, "no replacement was started"
            time.sleep(0.05)
        pid = new.pop()
        os.kill(pid, signal.SIGKILL)
        killed.add(pid)


def test_an_accelerator_process_that_keeps_dying_stops_the_pod_with_exit_1(
    tiny_model_file, tmp_path
):
    """Restarting forever would hide a crash loop behind a pod that is never ready; after
    ENGINE_RESTARTS deaths within the window the supervisor exits 1, so the kubelet restarts
    the container with its backoff and the restarts show in its status."""
    import psutil

    from service.server.supervisor import ENGINE_RESTARTS

    srv = start_server({"SERVE_WEIGHTS": str(tiny_model_file)}, tmp_path / "log")
    try:
        front = frontends(srv.process.pid)
        _kill_each_new_one(srv, lambda pid: [p for p in [engine(pid)] if p], ENGINE_RESTARTS)
        assert srv.process.wait(60) == 1
        assert f"died {ENGINE_RESTARTS} times" in srv.log()
        assert front and not any(psutil.pid_exists(p) for p in front), "front ends left behind"
    finally:
        stop_server(srv)


def test_front_ends_that_keep_dying_stop_the_pod_with_exit_1(tiny_model_file, tmp_path):
    from service.server.supervisor import FRONTEND_RESTARTS

    env = {"SERVE_WEIGHTS": str(tiny_model_file), "SERVE_FRONTEND_PROCESSES": "1"}
    srv = start_server(env, tmp_path / "log")
    try:
        _kill_each_new_one(srv, frontends, FRONTEND_RESTARTS)
        assert srv.process.wait(60) == 1
        assert f"front ends died {FRONTEND_RESTARTS} times" in srv.log()
    finally:
        stop_server(srv)


# -- every request answered once, whatever dies (the wire's own tests: tests/unit/engine) ------

HELD = {
    "SERVE_MAX_BATCH_SIZE": "4",
    "SERVE_BATCH_BUCKETS": "1,2,4",
    "SERVE_MAX_BATCH_DELAY_MS": "1500",
    "SERVE_MODEL_INSTANCES": "1",
}


def _send(sock: socket.socket, body: bytes, headers: bytes = b"") -> None:
    sock.sendall(
        b"POST /v1/classify HTTP/1.1\r\nHost: t\r\nContent-Type: image/jpeg\r\n%s"
        b"Content-Length: %d\r\n\r\n" % (headers, len(body)) + body
    )


def test_a_front_end_killed_with_an_item_in_a_batch_loses_only_its_own(tiny_model_file, tmp_path):
    srv = start_server({"SERVE_WEIGHTS": str(tiny_model_file), **HELD}, tmp_path / "log")
    try:
        pids = frontends(srv.process.pid)
        socks = connections_on_each_frontend(srv.url, pids)
        victim, survivor = pids
        image = encode(photo_like(40, 40))
        _send(socks[victim], image)
        time.sleep(0.3)
        _send(socks[survivor], image)
        time.sleep(0.3)  # both images wait in one partial batch (held 1.5 s)
        os.kill(victim, signal.SIGKILL)
        status, body = _answer(socks[survivor])
        # The dead front end's item was dropped before the model: nobody waits for it.
        assert status == 200 and body["timing"]["batch_sizes"] == [1], body
        # Closed with the process, with no answer to the POST.
        socks[victim].settimeout(10)
        left = b""
        try:
            while chunk := socks[victim].recv(65536):
                left += chunk
        except ConnectionResetError:
            pass
        assert b"HTTP/1.1" not in left, left
        # The accelerator process answered the dropped item, then let the dead one go.
        deadline = time.monotonic() + 30
        while "disconnected (1 items in flight)" not in srv.log():
            assert time.monotonic() < deadline, srv.log()[-3000:]
            time.sleep(0.1)
        r = httpx.post(srv.url + "/v1/classify", content=image, headers=JPEG, timeout=30)
        assert r.status_code == 200
    finally:
        for sock in locals().get("socks", {}).values():
            sock.close()
        stop_server(srv)


def test_an_accelerator_process_killed_mid_batch_answers_every_request_at_once(
    tiny_model_file, tmp_path
):
    srv = start_server({"SERVE_WEIGHTS": str(tiny_model_file), **HELD}, tmp_path / "log")
    try:
        pids = frontends(srv.process.pid)
        socks = connections_on_each_frontend(srv.url, pids)
        image = encode(photo_like(40, 40))
        for pid in pids:
            _send(socks[pid], image)
        time.sleep(0.5)  # held in one partial batch
        os.kill(engine(srv.process.pid), signal.SIGKILL)
        started = time.monotonic()
        answers = [_answer(socks[pid]) for pid in pids]
        assert time.monotonic() - started < 5
        assert [s for s, _ in answers] == [503, 503], answers
        assert {b["error"]["code"] for _, b in answers} == {"engine_unavailable"}
    finally:
        for sock in locals().get("socks", {}).values():
            sock.close()
        stop_server(srv)


def test_a_deadline_that_passes_in_a_held_batch_is_a_504_and_the_next_request_runs(
    held_server,
):
    pids = frontends(held_server.process.pid)
    sock = next(iter(connections_on_each_frontend(held_server.url, pids).values()))
    image = encode(photo_like(40, 40))
    started = time.monotonic()
    _send(sock, image, b"X-Request-Timeout-Ms: 300\r\n")
    status, body = _answer(sock)
    assert status == 504 and body["error"]["code"] == "deadline_exceeded", body
    assert time.monotonic() - started < 1.4  # before the held batch would have run
    status, body = post(sock, image)
    sock.close()
    assert status == 200, body


def _run_of(pid: int) -> str:
    """The run (directory name) a process of the pod belongs to, from its environment."""
    with open(f"/proc/{pid}/environ", "rb") as f:
        env = dict(entry.split(b"=", 1) for entry in f.read().split(b"\0") if b"=" in entry)
    return env[b"RESNET_SERVE_RUN"].decode()


def test_the_next_start_removes_what_a_pod_killed_as_a_whole_left_in_dev_shm(
    tiny_model_file, tmp_path
):
    """An OOM kill takes every process of the container at once: nobody unlinks the arenas
    and the workers' slots, and the pod's /dev/shm (an emptyDir) outlives the container."""
    import psutil

    env = {"SERVE_WEIGHTS": str(tiny_model_file)}
    first = start_server(env, tmp_path / "first.log")
    try:
        pod = psutil.Process(first.process.pid)
        processes = [pod, *pod.children(recursive=True)]
        run = _run_of(frontends(first.process.pid)[0])
        shm = "/dev/shm"
        left = [name for name in os.listdir(shm) if name.startswith(run + "-")]
        assert len(left) >= 2  # the two front ends' arenas
        for process in processes:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        psutil.wait_procs(processes, timeout=30)
    finally:
        stop_server(first)
    assert all(os.path.exists(os.path.join(shm, name)) for name in left)
    second = start_server(env, tmp_path / "second.log")
    try:
        assert not os.path.exists(os.path.join(shm, run))
        assert not [name for name in os.listdir(shm) if name.startswith(run + "-")]
        assert f"removed /dev/shm/{run}" in second.log()
        assert httpx.get(second.url + "/readyz").status_code == 200
    finally:
        stop_server(second)


def test_what_a_killed_accelerator_process_leaves_is_reaped(tiny_model_file, tmp_path):
    """Its children (its resource tracker, its workers) are orphaned when it is killed: the
    supervisor adopts them (PID 1 in a container, a subreaper elsewhere) and reaps them, so
    no zombie is left behind for the pod's life."""
    import psutil

    srv = start_server({"SERVE_WEIGHTS": str(tiny_model_file)}, tmp_path / "log")
    try:
        victim = psutil.Process(engine(srv.process.pid))
        orphans = [child.pid for child in victim.children(recursive=True)]
        assert orphans  # at least its resource tracker
        victim.kill()
        deadline = time.monotonic() + 30
        while httpx.get(srv.url + "/readyz").status_code != 200:  # its successor is up
            assert time.monotonic() < deadline
            time.sleep(0.2)
        deadline = time.monotonic() + 15
        while left := [pid for pid in orphans if psutil.pid_exists(pid)]:
            assert time.monotonic() < deadline, [
                (pid, psutil.Process(pid).status(), psutil.Process(pid).ppid()) for pid in left
            ]
            time.sleep(0.2)
        assert "reaped" in srv.log()  # they came to the supervisor, not to the machine's init
    finally:
        stop_server(srv)
