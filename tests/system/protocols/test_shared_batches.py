"""A V2, a TensorFlow Serving and a /v1/classify request that arrive together share a batch."""

from __future__ import annotations

import base64
import threading
from concurrent.futures import ThreadPoolExecutor

from tests.support.protocols import encoded, noise_image


def test_requests_of_every_protocol_share_one_batch(make_client):
    # A long batching window and room for all three: the batch closes when the window ends.
    # Padding on: on CPU the default takes whole buckets only (3 images would run as 2 + 1).
    client = make_client(
        max_batch_delay_ms=1500, max_batch_size=8, batch_buckets=[1, 2, 4, 8], batch_padding="pad"
    )
    name = client.app.state.settings.model_name
    jpeg = encoded(noise_image(40, 40, seed=9), "JPEG")
    start = threading.Barrier(3)

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
                    "data": noise_image(32, 32, seed=10).ravel().tolist(),
                }
            ]
        }
        return client.post(f"/v2/models/{name}/infer", json=body)

    def tfserving():
        start.wait()
        body = {"instances": [{"b64": base64.b64encode(jpeg).decode()}]}
        return client.post(f"/v1/models/{name}:predict", json=body)

    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(f) for f in (classify, v2, tfserving)]
        responses = [f.result() for f in futures]
    assert [r.status_code for r in responses] == [200, 200, 200], [r.text for r in responses]
    assert responses[0].json()["timing"]["batch_sizes"] == [3]
