"""The load-test suite lives in ``loadtest/`` at the repository root (not in the installed
package): make it importable whatever directory pytest runs from."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
