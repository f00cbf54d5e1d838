"""The demo page in a real headless Chromium: pick an image, see the model's label.

Needs Debian's chromium and chromium-driver (`sh scripts/install-browser.sh`) and the selenium
package; skipped, with the reason, where they are missing. Nothing is downloaded: the driver is
given by path, so Selenium Manager never runs, and the page itself loads nothing from the network.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from cifarlab import checkpoint
from cifarlab.evaluate import predict_files
from conftest import held_out_files, tiny_run

pytestmark = pytest.mark.browser

pytest.importorskip("selenium", reason="needs selenium: pip install selenium")
pytest.importorskip("fastapi", reason="needs: pip install fastapi uvicorn python-multipart")

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from cifarlab.serve import create_app  # noqa: E402
from conftest import copy_run, live_server  # noqa: E402


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_run(tmp_path_factory)


@pytest.fixture(scope="module")
def site(run: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The server for a copy of the run that has a training report."""
    own = copy_run(run, tmp_path_factory.mktemp("browser") / "run")
    (own / "report").mkdir()
    (own / "report" / "report.html").write_text("<title>Training report</title><h1>Training report</h1>")
    with live_server(create_app(own)) as url:
        yield url


def upload(browser: Any, file: Path) -> None:
    browser.find_element(By.ID, "file").send_keys(str(file))
    WebDriverWait(browser, 20).until(
        lambda d: d.find_element(By.ID, "top").get_attribute("data-label")
        or d.find_element(By.ID, "error").text)


def test_upload_shows_the_image_and_the_top_5(browser: Any, site: str, run: Path) -> None:
    model, record = checkpoint.load_model(run)
    files = held_out_files(run)[5::20]
    expected = predict_files(model, record["classes"], files, 5, torch.device("cpu"))
    browser.get(site + "/")
    header = browser.find_element(By.ID, "model").text
    assert "base" in header and f"{100 * record['metrics']['val_acc']:.1f}%" in header
    for file, want in zip(files, expected, strict=True):
        upload(browser, file)
        assert browser.find_element(By.ID, "error").text == ""
        rows = browser.find_elements(By.CSS_SELECTOR, "#top li")
        labels = [row.find_element(By.CLASS_NAME, "label").text for row in rows]
        assert labels == [t["label"] for t in want["top"]], file
        assert browser.find_element(By.ID, "top").get_attribute("data-label") == want["top"][0]["label"]
        widths = [row.find_element(By.CSS_SELECTOR, ".bar div").size["width"] for row in rows]
        assert widths == sorted(widths, reverse=True) and widths[0] > 0
        shown = browser.execute_script(
            "const img = document.getElementById('preview'); return img.complete && img.naturalWidth;")
        assert shown == 32  # the uploaded CIFAR image itself is displayed


def test_bad_file_shows_the_servers_message(browser: Any, site: str, tmp_path: Path) -> None:
    browser.get(site + "/")
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("these are notes, not pixels")
    upload(browser, not_an_image)
    assert "not an image" in browser.find_element(By.ID, "error").text
    assert browser.find_elements(By.CSS_SELECTOR, "#top li") == []


def test_report_link_opens_the_runs_report(browser: Any, site: str) -> None:
    browser.get(site + "/")
    browser.find_element(By.ID, "report").click()
    WebDriverWait(browser, 10).until(lambda d: d.title == "Training report")
    assert browser.current_url == site + "/report/report.html"
