"""Built-in functions for ``cpu`` pipeline stages (``service.pipeline.cpu_functions:NAME``).

A cpu stage's function takes one item's output row of the previous stage (a NumPy array) and
returns one NumPy array. It runs in the spawned preprocessing workers, so this module (like any
module named in a ``function:``) must import neither TensorFlow nor Keras.
"""

from __future__ import annotations

import numpy as np

EPSILON = 1e-12


def l2_normalize(features: np.ndarray) -> np.ndarray:
    """Scale a feature vector to unit L2 length (what retrieval and transfer heads expect);
    an all-zero vector stays zero."""
    x = np.asarray(features, dtype=np.float32)
    return x / max(float(np.linalg.norm(x)), EPSILON)
