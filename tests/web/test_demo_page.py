"""The demo page at ``GET /`` in headless Chromium against a real server on loopback: choose or
drop an image, and the page shows the service's own answer (top-5 bars, latency, model)."""

from __future__ import annotations

import base64
import io
import os
import shutil
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.support.helpers import encode, photo_like, start_server, stop_server

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def sample_jpeg() -> bytes:
    """Chelsea the cat from scikit-image when it is installed, else a synthetic photo."""
    try:
        from skimage import data

        return encode(data.chelsea(), "JPEG", quality=90)
    except ImportError:
        return encode(photo_like(), "JPEG", quality=90)


def open_page(page, url: str) -> list[str]:
    """Load the page and wait until it shows the model; returns the console's error list."""
    errors: list[str] = []
    page.on(
        "console",
        lambda m: (
            errors.append(f"{m.text} {m.location.get('url', '')}") if m.type == "error" else None
        ),
    )
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url + "/")
    page.wait_for_selector("body[data-model='ready']")
    return errors


def rendered_predictions(page) -> list[dict]:
    return page.eval_on_selector_all(
        "#predictions li",
        """items => items.map(li => ({
            label: li.querySelector('.label').textContent,
            class_id: Number(li.dataset.classId),
            score: Number(li.dataset.score),
            pct: li.querySelector('.pct').textContent,
            bar: li.querySelector('.bar').getBoundingClientRect().width,
            track: li.querySelector('.track').getBoundingClientRect().width,
        }))""",
    )


def assert_matches_api(shown: list[dict], answer: dict) -> None:
    expected = answer["predictions"][0]
    assert len(shown) == len(expected) == 5
    for got, want in zip(shown, expected, strict=True):
        assert got["label"] == want["label"]
        assert got["class_id"] == want["class_id"]
        assert got["score"] == pytest.approx(want["score"], abs=1e-6)
        assert got["pct"] == f"{100 * want['score']:.1f}%"
        # The bar is the score's share of its track (2 px minimum so a 0% class still shows).
        assert got["bar"] == pytest.approx(max(2.0, want["score"] * got["track"]), abs=1.5)


def save_screenshot(page, path: Path) -> None:
    page.screenshot(path=str(path), full_page=True)
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    with Image.open(io.BytesIO(data)) as im:
        assert im.width >= 1000 and im.height >= 500
        # Not a blank page: a rendered result has many distinct colours (photo, bars, text).
        assert len(im.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 1000


def test_page_and_its_files_are_served_with_a_strict_policy(make_client):
    client = make_client()
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert '<script src="/web/app.js"' in page.text and 'id="predictions"' in page.text
    js = client.get("/web/app.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert "/v1/classify" in js.text
    css = client.get("/web/style.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    missing = client.get("/web/secrets.txt")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    assert client.get("/web/..%2Fapp.py").status_code == 404
    # The page is not part of the API's schema.
    assert "/" not in client.get("/openapi.json").json()["paths"]


def test_chosen_image_shows_top5_bars_latency_and_model(server, page, tmp_path):
    image = tmp_path / "chelsea.jpg"
    image.write_bytes(sample_jpeg())
    errors = open_page(page, server.url)
    model = httpx.get(server.url + "/v1/models").json()["models"][0]
    assert page.text_content("#model-name") == model["name"]
    assert page.text_content("#model-weights") == model["weights"]
    assert page.text_content("#model-state") == "ready"

    page.set_input_files("#file", str(image))
    page.wait_for_selector("body[data-status='done']")

    answer = httpx.post(
        server.url + "/v1/classify?top_k=5",
        content=image.read_bytes(),
        headers={"content-type": "image/jpeg"},
    ).json()
    assert_matches_api(rendered_predictions(page), answer)
    assert float(page.get_attribute("#latency", "data-ms")) > 0
    assert page.text_content("#latency").endswith("ms round trip")
    assert "inference" in page.text_content("#timing")
    assert page.text_content("#file-name").startswith("chelsea.jpg")
    # The preview is the image that was sent, decoded by the browser.
    width = page.eval_on_selector("#preview", "img => img.complete && img.naturalWidth")
    with Image.open(image) as im:
        assert width == im.width
    # The tiny test model's weights are trained-as-saved, not random: no warning.
    assert page.is_hidden("#random-warning")
    assert page.is_hidden("#error")
    assert errors == []
    save_screenshot(page, tmp_path / "demo-tiny.png")


def test_dropped_image_is_classified(server, page):
    png = encode(photo_like(200, 300, seed=3), "PNG")
    open_page(page, server.url)
    transfer = page.evaluate_handle(
        """b64 => {
            const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], 'dropped.png', {type: 'image/png'}));
            return dt;
        }""",
        base64.b64encode(png).decode(),
    )
    page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})
    page.wait_for_selector("body[data-status='done']")
    answer = httpx.post(
        server.url + "/v1/classify?top_k=5", content=png, headers={"content-type": "image/png"}
    ).json()
    assert_matches_api(rendered_predictions(page), answer)
    assert page.text_content("#file-name").startswith("dropped.png")


def test_a_file_that_is_not_an_image_shows_the_services_error(server, page, tmp_path):
    bogus = tmp_path / "notes.png"
    bogus.write_bytes(b"these are not pixels " * 20)
    open_page(page, server.url)
    page.set_input_files("#file", str(bogus))
    page.wait_for_selector("body[data-status='error']")
    message = page.text_content("#error")
    code = httpx.post(
        server.url + "/v1/classify",
        content=bogus.read_bytes(),
        headers={"content-type": "image/png"},
    ).json()["error"]["code"]
    assert message.startswith(f"400 {code}:")
    assert page.locator("#predictions li").count() == 0


@pytest.fixture(scope="module")
def random_resnet(tmp_path_factory):
    """The real ResNet50 architecture with random weights (what a machine without the ImageNet
    file serves); one bucket and one worker so that it starts in seconds."""
    log = tmp_path_factory.mktemp("random-resnet") / "server.log"
    srv = start_server(
        {
            "SERVE_MODEL": "resnet50",
            "SERVE_WEIGHTS": "random",
            "SERVE_MAX_BATCH_SIZE": "1",
            "SERVE_BATCH_BUCKETS": "1",
            "SERVE_PREPROCESS_WORKERS": "1",
        },
        log,
    )
    yield srv
    stop_server(srv)


def test_random_weights_show_a_visible_warning(random_resnet, page, tmp_path):
    image = tmp_path / "chelsea.jpg"
    image.write_bytes(sample_jpeg())
    errors = open_page(page, random_resnet.url)
    warning = page.locator("#random-warning")
    assert warning.is_visible()
    assert "Random weights" in warning.text_content()
    assert "RANDOM" in page.text_content("#random-warning-detail")
    assert page.text_content("#model-name") == "resnet50"
    assert page.text_content("#model-weights") == "random"
    box = warning.bounding_box()
    assert box is not None and box["height"] > 20 and box["y"] < 300  # above the fold

    page.set_input_files("#file", str(image))
    page.wait_for_selector("body[data-status='done']")
    shown = rendered_predictions(page)
    assert len(shown) == 5
    assert all(0 <= p["class_id"] < 1000 for p in shown)
    assert [p["score"] for p in shown] == sorted((p["score"] for p in shown), reverse=True)
    assert errors == []
    shot = tmp_path / "demo.png"
    save_screenshot(page, shot)
    # `make demo-screenshot` refreshes the README's picture from this run.
    if os.environ.get("DEMO_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["DEMO_SCREENSHOT"])
