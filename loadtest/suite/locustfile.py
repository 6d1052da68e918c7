"""Locust users of the service, one class per API, selected by tags.

    locust -f loadtest/suite/locustfile.py --headless --host http://127.0.0.1:8000 \\
        --tags classify-raw --shape step --step-users 2 --steps 5 --step-time 30

Tags: ``classify-raw``, ``classify-multipart``, ``classify-b64`` (all three: ``classify``),
``v2`` (KServe V2 infer), ``grpc`` (KServe V2 ``ModelInfer`` over gRPC, on ``--grpc-target``),
``grpc-stream`` (the same requests on one ``ModelStreamInfer`` stream per user), ``tfserving``
(TF Serving predict), ``jobs`` (asynchronous jobs). ``v2``, ``tfserving`` and ``jobs`` are also
tagged ``protocols``: ``--exclude-tags protocols`` leaves them out (``grpc`` and ``grpc-stream``
are chosen by name only: they need a client library the HTTP users do not). Every answer is
checked (checks.py); a malformed answer counts as a failure. With ``LOADTEST_TOKEN`` set, every
request carries it (``Authorization: Bearer``; gRPC: the same metadata).

The gRPC users need ``tritonclient[grpc]`` (the ``loadtest`` extra; in the cluster, a Locust
image with it: docs/LOADTEST.md); without it, choosing them stops the run with that advice.

Closed loop (default): each user sends, waits for the answer, thinks ``--think-time`` seconds.
Open loop (``--arrival-rate R``): requests arrive at R per second in total (Poisson gaps),
whatever the latency; R scales with the shape's user count (R at its largest).

The shape comes from ``--shape`` (shapes.py; its options and the request log: options.py).
This file also runs from a flat folder (the in-cluster ConfigMap) next to options.py,
shapes.py, checks.py and images.py.
"""

from __future__ import annotations

import base64
import collections
import itertools
import json
import os
import random
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import gevent
import gevent.event
import gevent.pool
import gevent.queue
from locust import FastHttpUser, events, tag, task
from locust.user.task import filter_tasks_by_tags

try:
    from loadtest.suite import checks, images, options, shapes
except ImportError:  # flat folder (the chart's ConfigMap)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import checks  # type: ignore[no-redef]
    import images  # type: ignore[no-redef]
    import options  # type: ignore[no-redef]
    import shapes  # type: ignore[no-redef]

# Locust takes the shape class from this module's names.
PlannedShape = options.PlannedShape

# Locust writes the history CSV once a second (its default; set here so a change upstream
# does not silently coarsen the reports).
import locust.stats  # noqa: E402

locust.stats.CSV_STATS_INTERVAL_SEC = 1

IMAGES: list[tuple[str, bytes, str]] = []
JSON = {"Content-Type": "application/json"}
PART_OF_JOB = {options.PART_OF: "job"}
TOKEN = os.environ.get("LOADTEST_TOKEN", "")

try:  # the gRPC user's client: gRPC on gevent's loop, Triton's definitions of the messages
    import grpc
    import grpc.experimental.gevent as grpc_gevent
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    grpc_gevent.init_gevent()
except ImportError:
    grpc = None  # type: ignore[assignment]


@events.init.add_listener
def _init(environment, **_kwargs) -> None:
    o = environment.parsed_options
    if o is None:
        return
    options.stages_of(o)  # fail fast on impossible shape parameters
    if not IMAGES:
        if o.images_dir:
            IMAGES.extend(images.load_folder(Path(o.images_dir)))
        else:
            IMAGES.extend(images.builtin_set(8, o.seed))
    # Locust filters tasks by tag only when the test starts and then fails on a user class
    # left with none: filter now (filtering twice is harmless) and drop those classes.
    for user_class in environment.user_classes:
        filter_tasks_by_tags(
            user_class, set(o.tags) if o.tags else None, set(o.exclude_tags or ()) or None
        )
    environment.user_classes[:] = [u for u in environment.user_classes if u.tasks]
    if grpc is None and {GrpcV2User, GrpcStreamUser} & set(environment.user_classes):
        raise SystemExit(
            "the grpc users need tritonclient[grpc] (pip install 'tritonclient[grpc]')"
        )
    if not environment.user_classes:
        raise SystemExit("no user class has a task with the chosen --tags/--exclude-tags")
    if o.request_log:
        options.RequestLog.start(environment, Path(o.request_log))
    if o.csv_prefix and not o.worker:  # the process that writes Locust's CSVs
        environment.events.quit.add_listener(
            lambda **_kw: options.write_final_stats(environment, o.csv_prefix)
        )


_user_ids = itertools.count()


class ApiUser(FastHttpUser):
    """Shared machinery: image choice, closed or open loop, answer checks."""

    abstract = True
    network_timeout = 120.0
    connection_timeout = 30.0

    default_headers = {"Authorization": f"Bearer {TOKEN}"} if TOKEN else None

    def __init__(self, environment):
        o = environment.parsed_options
        # Connections per user: an open-loop user has up to --max-in-flight requests open, and
        # one waiting for a connection would count the wait as the server's latency.
        self.concurrency = max(1, o.max_in_flight)
        super().__init__(environment)
        self.o = o
        self.rng = random.Random(o.seed * 1_000_003 + next(_user_ids))
        stages = options.stages_of(o)
        most = shapes.max_users(stages) if stages else options.users_of(o)
        self.rate = o.arrival_rate / most if o.arrival_rate > 0 else 0.0
        self.pool = gevent.pool.Pool(o.max_in_flight)
        self.next_arrival: float | None = None

    def wait_time(self) -> float:
        return 0.0 if self.rate else self.o.think_time

    def on_stop(self) -> None:
        self.pool.kill(block=False)

    def images(self, n: int) -> list[tuple[str, bytes, str]]:
        return [self.rng.choice(IMAGES) for _ in range(n)]

    def b64(self, n: int) -> list[str]:
        return [base64.b64encode(data).decode() for _, data, _ in self.images(n)]

    def post_json(self, path: str, body: dict, name: str, context: dict | None = None):
        return self.client.post(
            path,
            data=json.dumps(body),
            headers=JSON,
            name=name,
            catch_response=True,
            context=context or {},
        )

    def fire(self, send) -> None:
        """Closed loop: send now. Open loop: wait for the next Poisson arrival, send without
        waiting for the answer (up to ``--max-in-flight`` at once; beyond that the arrival is
        recorded as a failure, since the load generator itself is the bottleneck)."""
        if not self.rate:
            send()
            return
        now = time.monotonic()
        if self.next_arrival is None:
            self.next_arrival = now + self.rng.expovariate(self.rate)
        if self.next_arrival > now:
            gevent.sleep(self.next_arrival - now)
        self.next_arrival += self.rng.expovariate(self.rate)
        if self.pool.full():
            self.environment.events.request.fire(
                request_type="OPEN",
                name="open-loop overflow",
                response_time=0,
                response_length=0,
                exception=RuntimeError(f"more than {self.o.max_in_flight} requests in flight"),
                context={},
            )
            return
        self.pool.spawn(send)

    def check(self, response, problem_of) -> None:
        """Mark ``response`` failed unless it is 200 with a well-formed JSON body."""
        if response.status_code != 200:
            code = ""
            try:
                code = response.json()["error"]["code"]
            except Exception:
                pass
            response.failure(f"HTTP {response.status_code} {code}".strip())
            return
        try:
            body = response.json()
        except Exception:
            response.failure("the answer is not JSON")
            return
        problem = problem_of(body)
        if problem:
            response.failure(problem)
        else:
            response.success()

    def model_name(self) -> str:
        if self.o.model_name:
            return self.o.model_name
        with self.client.get("/v1/models", name="/v1/models", catch_response=True) as r:
            try:
                name = r.json()["models"][0]["name"]
                r.success()
                return name
            except Exception:
                r.failure("GET /v1/models gave no model name")
                return "resnet50"


class ClassifyRawUser(ApiUser):
    """``POST /v1/classify`` with one image as the raw body."""

    @tag("classify", "classify-raw")
    @task
    def classify_raw(self) -> None:
        self.fire(self.send)

    def send(self) -> None:
        _, data, ctype = self.images(1)[0]
        k = self.o.top_k
        with self.client.post(
            f"/v1/classify?top_k={k}",
            data=data,
            headers={"Content-Type": ctype},
            name="/v1/classify [raw]",
            catch_response=True,
        ) as r:
            self.check(r, lambda b: checks.classify(b, 1, k))


class ClassifyMultipartUser(ApiUser):
    """``POST /v1/classify`` with ``--images-per-request`` images as multipart/form-data."""

    @tag("classify", "classify-multipart")
    @task
    def classify_multipart(self) -> None:
        self.fire(self.send)

    def send(self) -> None:
        n, k = self.o.images_per_request, self.o.top_k
        boundary = f"loadtest{self.rng.getrandbits(64):016x}"
        parts = []
        for i, (name, data, ctype) in enumerate(self.images(n)):
            parts.append(
                f'--{boundary}\r\nContent-Disposition: form-data; name="images"; '
                f'filename="{i}-{name}"\r\nContent-Type: {ctype}\r\n\r\n'.encode()
                + data
                + b"\r\n"
            )
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="top_k"\r\n\r\n{k}\r\n'
            f"--{boundary}--\r\n".encode()
        )
        with self.client.post(
            "/v1/classify",
            data=b"".join(parts),
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
            name="/v1/classify [multipart]",
            catch_response=True,
        ) as r:
            self.check(r, lambda b: checks.classify(b, n, k))


class ClassifyB64User(ApiUser):
    """``POST /v1/classify`` with JSON ``{"images": [{"b64": ...}], "top_k": k}``."""

    @tag("classify", "classify-b64")
    @task
    def classify_b64(self) -> None:
        self.fire(self.send)

    def send(self) -> None:
        n, k = self.o.images_per_request, self.o.top_k
        body = {"images": [{"b64": b} for b in self.b64(n)], "top_k": k}
        with self.post_json("/v1/classify", body, "/v1/classify [b64]") as r:
            self.check(r, lambda b: checks.classify(b, n, k))


class V2InferUser(ApiUser):
    """KServe V2 ``POST /v2/models/{name}/infer`` (docs/PROTOCOLS.md): the ``images`` BYTES
    input in base64, the top k of ``probabilities`` through the classification extension."""

    def on_start(self) -> None:
        self.model = self.model_name()

    @tag("protocols", "v2")
    @task
    def v2_infer(self) -> None:
        self.fire(self.send)

    def send(self) -> None:
        n = self.o.images_per_request
        n, k = self.o.images_per_request, self.o.top_k
        body = {
            "inputs": [{"name": "images", "shape": [n], "datatype": "BYTES", "data": self.b64(n)}],
            # Triton's classification extension: the top k as "score:index:label" strings.
            "outputs": [{"name": "probabilities", "parameters": {"classification": k}}],
        }
        path = f"/v2/models/{self.model}/infer"
        with self.post_json(path, body, "/v2/models/{name}/infer") as r:
            self.check(r, lambda b: checks.v2_infer(b, self.model, shape=[n, k]))


class _GrpcUser(ApiUser):
    """One channel (one HTTP/2 connection) per user on ``--grpc-target``, and the request:
    the ``images`` BYTES input in ``raw_input_contents``, the top k through the classification
    parameter, as ``tritonclient.grpc`` sends them."""

    abstract = True

    def on_start(self) -> None:
        self.model = self.model_name()
        o = self.o
        target = o.grpc_target or f"{urlsplit(self.host).hostname}:8001"
        self.channel = grpc.insecure_channel(
            target, options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)]
        )
        self.stub = service_pb2_grpc.GRPCInferenceServiceStub(self.channel)
        self.metadata = [("authorization", f"Bearer {TOKEN}")] if TOKEN else []

    def on_stop(self) -> None:
        super().on_stop()
        self.channel.close()

    def request(self, n: int, k: int):
        files = [data for _, data, _ in self.images(n)]
        tensor = service_pb2.ModelInferRequest.InferInputTensor(
            name="images", datatype="BYTES", shape=[n]
        )
        output = service_pb2.ModelInferRequest.InferRequestedOutputTensor(name="probabilities")
        output.parameters["classification"].int64_param = k
        return service_pb2.ModelInferRequest(
            model_name=self.model,
            inputs=[tensor],
            outputs=[output],
            raw_input_contents=[b"".join(len(f).to_bytes(4, "little") + f for f in files)],
        )

    def report(self, name: str, start: float, length: int, problem: str | None) -> None:
        self.environment.events.request.fire(
            request_type="gRPC",
            name=name,
            response_time=(time.perf_counter() - start) * 1000,
            response_length=length,
            exception=RuntimeError(problem) if problem else None,
            context={},
        )


class GrpcV2User(_GrpcUser):
    """KServe V2 ``ModelInfer`` over gRPC, one call per request."""

    @tag("grpc")
    @task
    def grpc_infer(self) -> None:
        self.fire(self.send)

    def send(self) -> None:
        n, k = self.o.images_per_request, self.o.top_k
        request = self.request(n, k)
        start = time.perf_counter()
        problem = None
        length = 0
        try:
            response = self.stub.ModelInfer(
                request, metadata=self.metadata, timeout=self.network_timeout
            )
            length = response.ByteSize()
            problem = checks.grpc_infer(response, self.model, [n, k])
        except grpc.RpcError as exc:
            problem = f"{exc.code().name}: {exc.details()}"
        self.report("ModelInfer", start, length, problem)


class _Stream:
    """One ``ModelStreamInfer`` call of a user: its outbox, and a reader that hands each
    answer to the oldest request waiting (the service answers in the order of the requests).
    Once the call ends, every request still waiting fails with why, and the user opens a new
    stream for its next request."""

    def __init__(self, stub, metadata):
        self.outbox: gevent.queue.Queue = gevent.queue.Queue()
        self.waiting: collections.deque = collections.deque()
        self.broken: str | None = None
        self.call = stub.ModelStreamInfer(self._requests(), metadata=metadata)
        self.reader = gevent.spawn(self._read)

    def _requests(self):
        while (request := self.outbox.get()) is not None:
            yield request

    def _read(self) -> None:
        try:
            for answer in self.call:
                self.waiting.popleft().set(answer)
            why = "the stream ended"
        except grpc.RpcError as exc:
            why = f"{exc.code().name}: {exc.details()}"
        except Exception as exc:  # an answer with no request waiting for it
            why = f"the stream broke: {exc!r}"
        self.broken = why
        while self.waiting:
            self.waiting.popleft().set_exception(RuntimeError(why))

    def send(self, request) -> gevent.event.AsyncResult:
        result = gevent.event.AsyncResult()
        self.waiting.append(result)  # no switch between the two: the order is the outbox's
        self.outbox.put(request)
        return result

    def close(self) -> None:
        self.outbox.put(None)
        self.call.cancel()


class GrpcStreamUser(_GrpcUser):
    """KServe V2 ``ModelStreamInfer`` (Triton's streaming API): one stream per user, each
    request sent on it (in the open loop, up to ``--max-in-flight`` at once on the one
    stream), each answer checked, its ``id`` that of its request; a request the service failed
    counts its ``error_message``."""

    stream: _Stream | None = None

    def on_start(self) -> None:
        super().on_start()
        self.ids = itertools.count()

    def on_stop(self) -> None:
        if self.stream is not None:
            self.stream.close()
        super().on_stop()

    @tag("grpc-stream")
    @task
    def grpc_stream_infer(self) -> None:
        self.fire(self.send)

    def send(self) -> None:
        if self.stream is None or self.stream.broken:
            self.stream = _Stream(self.stub, self.metadata)
        stream = self.stream
        n, k = self.o.images_per_request, self.o.top_k
        request = self.request(n, k)
        request.id = str(next(self.ids))
        start = time.perf_counter()
        problem = None
        length = 0
        try:
            answer = stream.send(request).get(timeout=self.network_timeout)
            length = answer.ByteSize()
            if answer.infer_response.id != request.id:
                problem = f"request {request.id} got the answer of {answer.infer_response.id!r}"
            elif answer.error_message:
                problem = answer.error_message
            else:
                problem = checks.grpc_infer(answer.infer_response, self.model, [n, k])
        except gevent.Timeout:
            problem = f"no answer within {self.network_timeout:g} s"
            stream.close()  # the answers behind it would be matched to the wrong requests
        except RuntimeError as exc:
            problem = str(exc)
        self.report("ModelStreamInfer", start, length, problem)


class TFServingUser(ApiUser):
    """TF Serving REST ``POST /v1/models/{name}:predict`` with ``{"instances": [{"b64": ...}]}``."""

    def on_start(self) -> None:
        self.model = self.model_name()

    @tag("protocols", "tfserving")
    @task
    def tfserving_predict(self) -> None:
        self.fire(self.send)

    def send(self) -> None:
        n = self.o.images_per_request
        body = {"instances": [{"b64": b} for b in self.b64(n)]}
        path = f"/v1/models/{self.model}:predict"
        with self.post_json(path, body, "/v1/models/{name}:predict") as r:
            self.check(r, lambda b: checks.tfserving_predict(b, n))


def _json(response) -> object:
    """The answer's JSON, or None: raised inside a ``catch_response`` block, the error would
    leave the request reported nowhere."""
    try:
        return response.json()
    except ValueError:
        return None


class JobsUser(ApiUser):
    """``POST /v1/jobs`` then ``GET /v1/jobs/{id}`` until done; also reports the job's
    end-to-end time as ``job (submit to result)``, failed when any part of it failed.

    The submit and the polls carry ``PART_OF_JOB`` in their context: the request log (the
    levels and the capacity search) counts jobs, not the HTTP calls one job takes.
    """

    @tag("protocols", "jobs")
    @task
    def job(self) -> None:
        self.fire(self.send)

    def send(self) -> None:
        n, k = self.o.images_per_request, self.o.top_k
        body = {"images": [{"b64": b} for b in self.b64(n)], "top_k": k}
        start = time.perf_counter()
        with self.post_json("/v1/jobs", body, "/v1/jobs", PART_OF_JOB) as r:
            jid = checks.job_id(_json(r)) if r.status_code in (200, 201, 202) else None
            if jid is None:
                problem: str | None = f"HTTP {r.status_code}: no job id in the answer"
                r.failure(problem)
            else:
                r.success()
        if jid is not None:
            problem = self._poll(jid, start)
        self.environment.events.request.fire(
            request_type="JOB",
            name="job (submit to result)",
            response_time=(time.perf_counter() - start) * 1000,
            response_length=0,
            exception=RuntimeError(problem) if problem else None,
            context={},
        )

    def _poll(self, jid: str, start: float) -> str | None:
        delay = 0.05
        while time.perf_counter() - start < self.o.job_timeout:
            with self.client.get(
                f"/v1/jobs/{jid}", name="/v1/jobs/{id}", catch_response=True, context=PART_OF_JOB
            ) as r:
                if r.status_code != 200:
                    r.failure(f"HTTP {r.status_code}")
                    return f"polling gave HTTP {r.status_code}"
                body = _json(r)
                if not isinstance(body, dict):
                    r.failure("the answer is not a JSON object")
                    return "polling gave an answer that is not a JSON object"
                r.success()
            state = checks.job_state(body)
            if state == "failed":
                return f"job failed: {body.get('error', body)}"
            if state == "done":
                result = body.get("result", body)
                return checks.classify(result, self.o.images_per_request, self.o.top_k)
            gevent.sleep(delay)
            delay = min(1.0, delay * 2)
        return f"no result within {self.o.job_timeout:g} s"
