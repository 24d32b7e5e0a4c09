"""The course website in a real browser: Chromium (Debian's) driven by Playwright.

Every page of the built site (``make book``: outputs/book/html, or ``$WBC_BOOK_SITE``) is opened from a
loopback HTTP server: it must log no console error and raise no script error, every ``<img>`` must
load (``naturalWidth > 0``), and every internal link must resolve (HTTP 200; a link with an anchor
must land on an element with that id). Requests that leave 127.0.0.1 are refused, so a page that
needs the internet (a script from a CDN) fails here too. Skipped, with the reason, when the site is
not built, Playwright is not installed or Chromium is missing (``book/install_chromium.sh`` installs
it; ``$WBC_CHROMIUM`` names another binary).
"""

from __future__ import annotations

import functools
import http.server
import os
import threading
import urllib.error
import urllib.request
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urldefrag, urljoin, urlsplit

import pytest

REPO = Path(__file__).resolve().parent.parent
SITE = Path(os.environ.get("WBC_BOOK_SITE", REPO / "outputs" / "book" / "html"))
CHROMIUM = Path(os.environ.get("WBC_CHROMIUM", "/usr/bin/chromium"))
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
# Pages the site must have: the home page, the instructor guide, the model card and every notebook.
REQUIRED = ["index.html", "README.html", "docs/INSTRUCTORS.html", "docs/MODEL_CARD.html"] + [
    f"notebooks/{nb.stem}.html" for nb in sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
]


def site_pages() -> list[str]:
    """Every HTML page of the built site, relative to it (the theme's templates in _static excluded)."""
    if not (SITE / "index.html").is_file():
        return []
    pages = (p.relative_to(SITE).as_posix() for p in SITE.rglob("*.html"))
    return sorted(p for p in pages if not p.startswith("_static/"))


PAGES = site_pages()
needs_site = pytest.mark.skipif(not PAGES, reason=f"site not built ({SITE / 'index.html'} is missing): run `make book`")


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        pass


class _Server(http.server.ThreadingHTTPServer):
    # The default backlog (5) can overflow when Chromium opens a page's scripts, styles and images at
    # once on a busy machine: a refused connection would read as a broken page.
    request_queue_size = 128


@pytest.fixture(scope="module")
def server():
    """Base URL of the site served on 127.0.0.1 by a thread of this process."""
    handler = functools.partial(_Quiet, directory=str(SITE))
    httpd = _Server(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """A Chromium context with a fresh profile; skips when Playwright or Chromium is missing."""
    if not CHROMIUM.is_file():
        pytest.skip(f"Chromium not found at {CHROMIUM}: run book/install_chromium.sh (as root) or set WBC_CHROMIUM")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (make setup)")
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
        )
        context.set_default_timeout(120_000)  # generous: the machine's two cores are often shared
        context.route(
            "**/*",
            lambda route: (
                route.continue_()
                if urlsplit(route.request.url).hostname == "127.0.0.1"
                else route.abort("blockedbyclient")
            ),
        )
        yield context
        context.close()


class _Ids(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        self.ids.update(value for name, value in attrs if name in ("id", "name") and value)


@functools.cache
def fetch(url: str) -> tuple[int, frozenset[str]]:
    """HTTP status of ``url`` and, for an HTML page, the ids its elements carry."""
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            status, body, kind = response.status, response.read(), response.headers.get_content_type()
    except urllib.error.HTTPError as error:
        return error.code, frozenset()
    if kind != "text/html":
        return status, frozenset()
    parser = _Ids()
    parser.feed(body.decode("utf-8", "replace"))
    return status, frozenset(parser.ids)


IMAGES_JS = """async () => {
  const images = [...document.images];
  for (const img of images) img.loading = "eager";
  await Promise.all(images.map((img) => img.decode().catch(() => null)));
  return images.map((img) => ({src: img.currentSrc || img.src, width: img.naturalWidth}));
}"""


@needs_site
def test_site_has_every_page():
    missing = [page for page in REQUIRED if page not in PAGES]
    assert not missing, f"pages missing from {SITE}: {missing}"


@needs_site
@pytest.mark.parametrize("page", PAGES)
def test_page_loads_cleanly(page, server, browser):
    tab = browser.new_page()
    errors: list[str] = []
    tab.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    tab.on("pageerror", lambda error: errors.append(f"script error: {error}"))
    tab.on("requestfailed", lambda request: errors.append(f"request failed: {request.url} ({request.failure})"))
    url = urljoin(server, page)
    response = tab.goto(url, wait_until="load")
    assert response is not None and response.status == 200, f"{page}: HTTP {response and response.status}"
    if page == "index.html":  # the site root forwards to the README
        tab.wait_for_url("**/README.html")
    tab.wait_for_load_state("networkidle")

    images = tab.evaluate(IMAGES_JS)
    links = tab.eval_on_selector_all("a[href]", "links => links.map((a) => a.href)")
    here = tab.url
    tab.close()

    problems = [f"console error: {error}" for error in errors]
    problems += [f"image did not load: {image['src']}" for image in images if image["width"] == 0]
    for link in links:
        target, anchor = urldefrag(link)
        if not target.startswith(server):
            continue  # an external link (Colab, the datasets' pages): not fetched
        status, ids = fetch(target)
        if status != 200:
            problems.append(f"link does not resolve: {link} (HTTP {status})")
        elif anchor and target.endswith(".html") and anchor not in ids:
            problems.append(f"link does not resolve: {link} (no element with id {anchor!r})")
    assert not problems, f"{here}:\n" + "\n".join(problems)
