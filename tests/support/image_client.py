"""What Triton's example ``image_client.py`` (triton-inference-server/client,
src/python/examples) does, re-written for the tests: its model checks, its preprocessing and
its request, over HTTP or gRPC, so that a model it would refuse fails here the same way. The
original file stays outside the repository; the command it stands for is in docs/PROTOCOLS.md:

    python image_client.py -m resnet50-pixels -s NONE -c 3 -b 4 \
        [-i grpc [--streaming] -u host:8001] DIR
"""

from __future__ import annotations

import io
import queue
from types import SimpleNamespace
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.model_config_pb2 as mc
import tritonclient.http as httpclient
from PIL import Image
from tritonclient.utils import triton_to_np_dtype


class Refused(Exception):
    """The example client would stop here, with this message."""


def _ns(value: Any) -> Any:
    """The HTTP client's JSON as attributes, as the example's AttrDict gives them."""
    if isinstance(value, dict):
        return SimpleNamespace(**{k: _ns(v) for k, v in value.items()})
    if isinstance(value, list):
        return [_ns(v) for v in value]
    return value


def check_model(metadata: Any, config: Any) -> tuple[int, str, str, int, int, int, int, str]:
    """The example's checks of an image classifier; (max_batch_size, input, output, c, h, w,
    format, datatype), or ``Refused``."""
    if len(metadata.inputs) != 1:
        raise Refused(f"expecting 1 input, got {len(metadata.inputs)}")
    if len(metadata.outputs) != 1:
        raise Refused(f"expecting 1 output, got {len(metadata.outputs)}")
    if len(config.input) != 1:
        raise Refused(f"expecting 1 input in model configuration, got {len(config.input)}")
    tensor, tensor_config, output = metadata.inputs[0], config.input[0], metadata.outputs[0]
    if output.datatype != "FP32":
        raise Refused(f"expecting output datatype to be FP32, got {output.datatype}")
    batching = config.max_batch_size > 0
    # The output must be a vector: one dimension above 1, not counting the batch.
    dims = list(output.shape)[1:] if batching else list(output.shape)
    if sum(1 for d in dims if d > 1) > 1:
        raise Refused("expecting model output to be a vector")
    if len(tensor.shape) != 3 + (1 if batching else 0):
        raise Refused(f"expecting input to have {3 + batching} dimensions, got {tensor.shape}")
    fmt = tensor_config.format
    if isinstance(fmt, str):
        fmt = dict(mc.ModelInput.Format.items())[fmt]
    if fmt not in (mc.ModelInput.FORMAT_NCHW, mc.ModelInput.FORMAT_NHWC):
        raise Refused(f"unexpected input format {mc.ModelInput.Format.Name(fmt)}")
    shape = list(tensor.shape)[1:] if batching else list(tensor.shape)
    if fmt == mc.ModelInput.FORMAT_NHWC:
        h, w, c = shape
    else:
        c, h, w = shape
    return config.max_batch_size, tensor.name, output.name, c, h, w, fmt, tensor.datatype


def preprocess(data: bytes, fmt: int, datatype: str, c: int, h: int, w: int) -> np.ndarray:
    """The example's preprocessing with ``-s NONE``: RGB, bilinear resize, the input's type."""
    image = Image.open(io.BytesIO(data)).convert("L" if c == 1 else "RGB")
    array = np.array(image.resize((w, h), Image.BILINEAR))
    if array.ndim == 2:
        array = array[:, :, None]
    typed = array.astype(triton_to_np_dtype(datatype))
    return np.transpose(typed, (2, 0, 1)) if fmt == mc.ModelInput.FORMAT_NCHW else typed


def classify(
    url: str,
    protocol: str,
    model: str,
    files: list[bytes],
    batch_size: int,
    classes: int,
    streaming: bool = False,
) -> tuple[np.ndarray, list[list[tuple[float, int, str]]]]:
    """Run the example's flow on ``files`` (a batch of ``batch_size``, repeating the files to
    fill it as the example does): the batch it sent, and its parsed ``score:index:label``
    results per image. ``streaming`` (gRPC only): its ``--streaming``, the request sent on a
    ``ModelStreamInfer`` stream and its answer taken from the stream's callback."""
    lib = grpcclient if protocol == "grpc" else httpclient
    client = lib.InferenceServerClient(url)
    try:
        metadata = client.get_model_metadata(model, "")
        config = client.get_model_config(model, "")
        if protocol == "grpc":
            config = config.config
        else:
            metadata, config = _ns(metadata), _ns(config)
        max_batch, input_name, output_name, c, h, w, fmt, datatype = check_model(metadata, config)
        if max_batch <= 0 and batch_size != 1:
            raise Refused("This model doesn't support batching.")
        images = [preprocess(f, fmt, datatype, c, h, w) for f in files]
        batch = np.stack([images[i % len(images)] for i in range(batch_size)])
        tensor = lib.InferInput(input_name, list(batch.shape), datatype)
        tensor.set_data_from_numpy(batch)
        outputs = [lib.InferRequestedOutput(output_name, class_count=classes)]
        if streaming:
            answers: queue.Queue = queue.Queue()
            client.start_stream(lambda result, error: answers.put((result, error)))
            client.async_stream_infer(model, [tensor], request_id="0", outputs=outputs)
            result, error = answers.get(timeout=60)
            client.stop_stream()
            if error is not None:
                raise Refused(str(error))
        else:
            result = client.infer(model, [tensor], outputs=outputs)
        answer = result.as_numpy(output_name)
        if len(answer) != batch_size:
            raise Refused(f"expected {batch_size} results, got {len(answer)}")
        parsed = []
        for row in answer:
            # The example joins chr() of each byte of a BYTES element, then splits on ':'.
            fields = ["".join(chr(b) for b in element).split(":") for element in row]
            parsed.append([(float(f[0]), int(f[1]), f[2]) for f in fields])
        return batch, parsed
    finally:
        client.close()
