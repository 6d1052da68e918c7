"""resnet-serve: Keras ResNet classification with pipelined preprocessing and dynamic batching.

Importing this package is cheap and never imports TensorFlow: every process of the pod (the
front ends, the accelerator process, its cpu-stage workers) imports it first.
"""

__version__ = "0.1.0"
