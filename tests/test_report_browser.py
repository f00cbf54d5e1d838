"""report.html in a real headless Chromium: it renders, every image loads, no console errors, and
it fits a phone's width.

Needs Debian's chromium and chromium-driver (scripts/install-browser.sh) and the `selenium` pip
package. Skipped, with the reason, only when no Chromium is installed.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from cifarlab.report import write_report
from cifarlab.rundir import FINAL as MODEL_FILE
from conftest import make_run

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A full report and the report of the same run without its model (unfinished)."""
    root = tmp_path_factory.mktemp("browser-run")
    run = make_run(root)
    unfinished = Path(shutil.copytree(run, root / "unfinished"))
    (unfinished / MODEL_FILE).unlink()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(root / "xdg-cache"))
        full = write_report(run, root / "full", device="cpu").out
    return {"full": full / "report.html",
            "unfinished": write_report(unfinished, root / "partial").out / "report.html"}


def load(browser: Any, page: Path, width: int, height: int = 900) -> dict[str, Any]:
    browser.set_window_size(width, height)
    browser.get(page.resolve().as_uri())
    state: dict[str, Any] = browser.execute_script("""
        return {
          ready: document.readyState,
          title: document.title,
          heading: document.querySelector('h1') ? document.querySelector('h1').innerText : '',
          images: [...document.images].map(i => ({complete: i.complete, width: i.naturalWidth})),
          pageWidth: document.documentElement.scrollWidth,
          viewportWidth: window.innerWidth,
        };""")
    state["errors"] = [entry for entry in browser.get_log("browser") if entry["level"] in ("SEVERE", "ERROR")]
    return state


@pytest.mark.parametrize("width", [1280, 390], ids=["desktop", "phone"])
def test_full_report_renders(browser: Any, reports: dict[str, Path], width: int,
                             tmp_path: Path) -> None:
    state = load(browser, reports["full"], width)
    assert state["ready"] == "complete"
    assert state["title"].startswith("cifarlab report: ")
    assert state["heading"].startswith("cifarlab report: ")
    assert len(state["images"]) == 5
    assert all(image["complete"] and image["width"] > 0 for image in state["images"]), state["images"]
    assert state["errors"] == []
    assert state["pageWidth"] <= state["viewportWidth"], "the page scrolls sideways"
    assert browser.save_screenshot(str(tmp_path / f"report-{width}.png"))


def test_unfinished_report_renders_and_says_what_was_skipped(browser: Any, reports: dict[str, Path]) -> None:
    state = load(browser, reports["unfinished"], 390)
    assert len(state["images"]) == 1 and state["images"][0]["width"] > 0
    assert state["errors"] == []
    assert "Skipped." in browser.find_element("css selector", ".skipped").text


def test_the_checks_catch_a_broken_page(browser: Any, tmp_path: Path) -> None:
    """The harness itself: a missing image and a script error must show up, or the checks prove nothing."""
    page = tmp_path / "broken.html"
    page.write_text('<!DOCTYPE html><title>broken</title><h1>x</h1><img src="missing.png">'
                    "<script>console.error('boom')</script>")
    state = load(browser, page, 800)
    assert state["images"] == [{"complete": True, "width": 0}]
    assert len(state["errors"]) == 2
