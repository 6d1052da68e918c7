"""What both processes know of the pipelines: their configuration (``config.py``: the
``SERVE_PIPELINES_FILE`` YAML) and their descriptions (``info.py``), plus the built-in
functions of ``cpu`` stages (``cpu_functions.py``). No TensorFlow, no batcher: the front ends
import it."""
