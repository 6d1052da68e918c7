"""The README's pictures and links point at files that exist (its first screen shows the demo
page and a load-test report, and links the notebooks, the chart and docs/)."""

from __future__ import annotations

import re
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def local_targets() -> list[str]:
    links = re.findall(r"\]\(([^)#\s]+)\)", README) + re.findall(r'src="([^"]+)"', README)
    return [t for t in links if not re.match(r"[a-z]+://", t)]


def test_every_relative_link_and_picture_exists():
    targets = local_targets()
    assert len(targets) >= 12
    missing = [t for t in targets if not (ROOT / t).exists()]
    assert not missing


def test_first_screen_has_the_pictures_and_the_links():
    top = README.split("## The API", 1)[0]
    for needed in (
        "docs/img/demo.png",
        "docs/img/loadtest-timeline.png",
        "notebooks/",
        "charts/resnet-serve",
        "(docs/)",
        "make run",
        "make test",
    ):
        assert needed in top, needed
    assert top.count("curl -s") == 3
    for picture in ("docs/img/demo.png", "docs/img/loadtest-timeline.png"):
        with Image.open(ROOT / picture) as im:
            assert im.format == "PNG" and im.width >= 800 and im.height >= 400
