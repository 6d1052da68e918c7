"""resnet-serve: Keras ResNet classification with pipelined preprocessing and dynamic batching.

Importing this package is cheap and never imports TensorFlow: the preprocessing worker
processes import ``service.pipeline.preprocess`` through it.
"""

__version__ = "0.1.0"
