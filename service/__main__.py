"""``python -m service`` / ``resnet-serve``: the pod's processes (``server/supervisor.py``).

Top-level imports stay light: this is the container's PID 1, and nothing here needs TensorFlow.
"""

from __future__ import annotations

import sys


def main() -> None:
    from .server.supervisor import main as supervise

    sys.exit(supervise())


if __name__ == "__main__":
    main()
