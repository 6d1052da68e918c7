"""The README documents every setting, with its default."""

import subprocess
import sys

from service.settings import Settings
from tests.support.helpers import ROOT


def test_readme_settings_table_is_current():
    result = subprocess.run(
        [sys.executable, "scripts/settings_table.py", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


def test_every_setting_is_in_the_readme_with_a_meaning():
    readme = (ROOT / "README.md").read_text()
    for name in Settings.model_fields:
        rows = [
            line for line in readme.splitlines() if line.startswith(f"| `SERVE_{name.upper()}` |")
        ]
        assert len(rows) == 1, name
        meaning = rows[0].rstrip(" |").rsplit("|", 1)[1].strip()
        assert meaning, f"SERVE_{name.upper()} has no meaning in the README"
