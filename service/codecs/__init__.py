"""One codec per protocol: its wire format into an ``InferRequest``, an ``InferResult`` back.

``classify.py`` (the native ``/v1/classify``: raw image, multipart, JSON with base64),
``v2.py`` (KServe V2 / Open Inference Protocol, binary tensor extension), ``tfserving.py``
(TensorFlow Serving REST); ``common.py`` holds what they share: bounded JSON, base64, the pixel
tensor checks. Codecs take bytes and header values, never a framework's request object, and
raise ``service.errors`` (``InvalidInput`` ...) for anything malformed.

To add a protocol: a codec here, a thin route module in ``service/api`` that reads the body and
calls ``DataPlane.infer``.
"""
