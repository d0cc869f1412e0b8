"""The demo page in a real headless browser: type a prompt, click Generate, see the progress bar and the image.

Needs the ``playwright`` Python package and Debian's chromium (``apt-get install -y chromium``); Playwright's own
browser download (``playwright install``) is never used.
"""

import os

import pytest

from diffsynth_l2p.demo.server import DemoServer, build_parser
from tests.demo_helpers import free_port, model_args

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 60_000
# Records every progress-bar state the page shows, so a fast run cannot slip between two polls.
WATCH_PROGRESS = """() => {
  window.progressSeen = [];
  new MutationObserver(() => {
    for (const el of document.querySelectorAll('.progress-level, .progress-bar')) {
      window.progressSeen.push(el.innerText.trim());
    }
  }).observe(document.body, {childList: true, subtree: true, characterData: true, attributes: true});
}"""

sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
if not os.access(CHROMIUM, os.X_OK):
    pytest.skip(f"{CHROMIUM} is missing: apt-get install -y chromium", allow_module_level=True)


@pytest.fixture(scope="module")
def demo_url(tiny_model_set):
    args = [*model_args(tiny_model_set), "--devices", "cpu", "--port", str(free_port())]
    server = DemoServer(build_parser().parse_args(args))
    try:
        yield server.start()
    finally:
        server.close()


@pytest.fixture
def page():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=TIMEOUT_MS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.route(lambda url: not url.startswith("http://127.0.0.1:"), lambda route: route.abort())
            page.set_default_timeout(TIMEOUT_MS)
            yield page
        finally:
            browser.close()


def test_generate_from_the_page_shows_progress_then_the_image(demo_url, page, tmp_path):
    page.goto(demo_url)
    page.locator("#prompt textarea").fill("a red circle left of a blue square")
    page.evaluate(WATCH_PROGRESS)
    page.locator("#generate").click()

    image = page.locator("#gallery img").first
    image.wait_for(state="visible")
    page.wait_for_function("document.querySelector('#gallery img').naturalWidth > 0")
    screenshot = tmp_path / "demo.png"
    page.screenshot(path=str(screenshot), full_page=True)

    assert screenshot.stat().st_size > 0
    assert image.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [64, 64]
    assert any(text.startswith("Sampling") for text in page.evaluate("window.progressSeen")), (
        "the sampling progress bar never appeared"
    )
