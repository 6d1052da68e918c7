"""Requests of every protocol share batches: V2 over gRPC and HTTP, TensorFlow Serving and
/v1/classify, through one dataplane (the gRPC server on a real loopback port)."""

from __future__ import annotations

import base64
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import tritonclient.grpc as grpcclient

from tests.support.helpers import free_port, metric_value
from tests.support.protocols import encoded, noise_image


def _pixels(seed: int) -> np.ndarray:
    return noise_image(32, 32, seed=seed)[None]


def test_requests_of_every_protocol_share_one_batch(make_client):
    # A long batching window and room for all four: the batch closes when the window ends.
    # Padding on: on CPU the default takes whole buckets only (3 images would run as 2 + 1).
    port = free_port()
    client = make_client(
        max_batch_delay_ms=1500,
        max_batch_size=8,
        batch_buckets=[1, 2, 4, 8],
        batch_padding="pad",
        grpc_port=port,
    )
    name = client.app.state.settings.model_name
    jpeg = encoded(noise_image(40, 40, seed=9), "JPEG")
    start = threading.Barrier(4)
    grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
    tensor = grpcclient.InferInput("pixels", [1, 32, 32, 3], "UINT8")
    tensor.set_data_from_numpy(_pixels(11))

    def classify():
        start.wait()
        return client.post("/v1/classify", content=jpeg, headers={"content-type": "image/jpeg"})

    def v2():
        start.wait()
        body = {
            "inputs": [
                {
                    "name": "pixels",
                    "datatype": "UINT8",
                    "shape": [1, 32, 32, 3],
                    "data": _pixels(10).ravel().tolist(),
                }
            ]
        }
        return client.post(f"/v2/models/{name}/infer", json=body)

    def tfserving():
        start.wait()
        body = {"instances": [{"b64": base64.b64encode(jpeg).decode()}]}
        return client.post(f"/v1/models/{name}:predict", json=body)

    def over_grpc():
        start.wait()
        return grpc.infer(name, [tensor]).as_numpy("probabilities")

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(f) for f in (classify, v2, tfserving, over_grpc)]
        responses = [f.result() for f in futures[:3]]
        probs = futures[3].result()
    grpc.close()
    assert [r.status_code for r in responses] == [200, 200, 200], [r.text for r in responses]
    assert responses[0].json()["timing"]["batch_sizes"] == [4]
    assert probs.shape == (1, 10)


def _counted(client) -> tuple[float, float]:
    """Batches run and images inferred, as a scrape reads them."""
    text = client.get("/metrics").text
    return (
        metric_value(text, "serve_execution_count_total"),
        metric_value(text, "serve_inference_count_total"),
    )


def test_a_concurrent_grpc_and_http_load_is_answered_in_shared_batches(make_client):
    port = free_port()
    client = make_client(max_batch_delay_ms=100, batch_padding="pad", grpc_port=port)
    name = client.app.state.settings.model_name
    expected: dict[int, np.ndarray] = {}
    for seed in range(4):  # each image's answer alone, to check the batched ones against
        tensor = grpcclient.InferInput("pixels", [1, 32, 32, 3], "UINT8")
        tensor.set_data_from_numpy(_pixels(seed))
        with grpcclient.InferenceServerClient(f"127.0.0.1:{port}") as alone:
            expected[seed] = alone.infer(name, [tensor]).as_numpy("probabilities")[0]
    executions, images = _counted(client)
    errors: list[str] = []

    def grpc_user(seed: int) -> None:
        with grpcclient.InferenceServerClient(f"127.0.0.1:{port}") as c:
            for _ in range(8):
                tensor = grpcclient.InferInput("pixels", [1, 32, 32, 3], "UINT8")
                tensor.set_data_from_numpy(_pixels(seed))
                got = c.infer(name, [tensor]).as_numpy("probabilities")[0]
                if not np.allclose(got, expected[seed], atol=1e-5):
                    errors.append(f"grpc {seed}: {got} != {expected[seed]}")

    def http_user(seed: int) -> None:
        for _ in range(8):
            body = {
                "inputs": [
                    {
                        "name": "pixels",
                        "datatype": "UINT8",
                        "shape": [1, 32, 32, 3],
                        "data": _pixels(seed).ravel().tolist(),
                    }
                ]
            }
            r = client.post(f"/v2/models/{name}/infer", json=body)
            if r.status_code != 200:
                errors.append(r.text)
                continue
            got = np.asarray(r.json()["outputs"][0]["data"], np.float32)
            if not np.allclose(got, expected[seed], atol=1e-5):
                errors.append(f"http {seed}: {got} != {expected[seed]}")

    users = [threading.Thread(target=grpc_user, args=(s,)) for s in (0, 1)]
    users += [threading.Thread(target=http_user, args=(s,)) for s in (2, 3)]
    for u in users:
        u.start()
    for u in users:
        u.join(120)
    assert not errors, errors[:3]
    executions_after, images_after = _counted(client)
    assert images_after - images == 32
    # Four users at once, batches held up to 100 ms: far fewer executions than images.
    assert executions_after - executions < 32 * 0.75
