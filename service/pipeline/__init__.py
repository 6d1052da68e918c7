"""The stages of a request: preprocess (process pool) -> batcher -> runner -> postprocess.

Kept free of TensorFlow imports: worker processes import ``service.pipeline.preprocess``.
"""
