"""Every page each role can reach fits a phone (360 px) and a wide screen (1920 px): no
sideways scroll of the page (measured `scrollWidth` against the viewport), Log out in view,
and at the wide width nothing in the page's column pokes out of it (long paths wrap, wide
tables scroll inside their own box). The console runs on the fake backend: this tests the
pages' layout, not the engine, and the pages read only the database.

The pages crawled show sandbox output only as the console composes it (ids, statuses, file
names and sizes listed by the console); this test reads no sandbox bytes from them."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from urllib.parse import urljoin, urlsplit

import pytest
from flask.testing import FlaskClient
from playwright.sync_api import Browser, Page, expect

from console.app import create_app
from console.core import Sealroom
from console.services import accounts, datasets, images
from console.settings import Settings
from tests.browser.people import log_in
from tests.conftest import make_fake_backend
from tests.helpers import (
    OPERATOR,
    PASSWORD,
    bearer,
    record_terminal_session,
    safetensors_bytes,
    supervisor_pass,
    write_dataset,
)
from tests.mocking import FakeBackend

pytestmark = [pytest.mark.browser]

# From 1148 px up <main> is its full 1100 px: what fits its column at 1920 px fits at 1280.
WIDTHS = (360, 1920)
HEIGHT = 800
#: One demo user per role (console/cli.py DEMO_USERS; carol is a second approver).
PEOPLE = {"alice": "engineer", "bob": "approver", "carol": "approver",
          "sam": "security_officer", "audrey": "auditor", "admin": "admin"}
ROLES = {"engineer": "alice", "approver": "bob", "security_officer": "sam",
         "auditor": "audrey", "admin": "admin"}
#: Long unbroken names, as real outboxes and audit targets have them.
LONG_NAME = ("checkpoints_of_the_long_running_sweep_over_learning_rates_2026/"
             "epoch_0005_of_0010_lr_0.0003_weight_decay_0.01_seed_1234/"
             "model_weights_after_the_fifth_epoch_of_ten_final.safetensors")
LONG_PROJECT = "study-" + "x" * 50
#: Pages with ids each role must have reached by links (the crawl found the data).
WITH_IDS = {"engineer": {"/sandboxes/*", "/releases/*", f"/projects/{LONG_PROJECT}"},
            "approver": {"/releases/*", "/releases/*/files/*"},
            "security_officer": {"/policy/versions/*", "/datasets/demo/versions/*",
                                 "/oversight/sandboxes", "/lineage/sandboxes/*"},
            "auditor": {"/audit/events/*", "/audit/sessions/*", "/policy/versions/*",
                        "/oversight/sandboxes"},
            "admin": {"/audit/events/*", "/audit/sessions/*"}}
#: Links that are not pages: downloads and raw recordings.
NOT_PAGES = re.compile(r"/(export|bundle)(\?|$)|\.(cast|pem)$|/live$|/metrics$")
#: Path segments that are ids: one page of each kind is enough to measure its layout.
_ID = re.compile(r"^(\d+|sb-[0-9a-f]+|rel-[0-9a-f]+|ssh-[0-9a-f]+)$")
#: At most this many pages a role: a crawl that finds more is finding pages without end.
MAX_PAGES = 80

_LINKS = """() => Array.from(document.querySelectorAll('a[href]'))
  .filter(a => !a.hasAttribute('download')).map(a => a.href)"""
# One round trip a width: the page's scroll width against the viewport; whether Log out is
# on screen, shown and the topmost thing at its centre; and what in <main> reaches past its
# right edge with no scroll box (overflow-x other than visible) in between.
_MEASURE = """() => {
  const found = {scroll: document.documentElement.scrollWidth, inner: window.innerWidth};
  const out = Array.from(document.querySelectorAll('header button'))
    .find(b => b.textContent.trim() === 'Log out');
  const r = out ? out.getBoundingClientRect() : null;
  found.box = r && [r.left, r.top, r.right, r.bottom];
  found.logout = !!r && out.checkVisibility() && r.left >= 0 && r.top >= 0
    && r.right <= window.innerWidth && r.bottom <= window.innerHeight
    && out.contains(document.elementFromPoint((r.left + r.right) / 2, (r.top + r.bottom) / 2));
  found.poking = [];
  const main = document.querySelector('main');
  const edge = main ? main.getBoundingClientRect().right + 1 : Infinity;
  for (const el of main ? main.querySelectorAll('*') : []) {
    if (el.getBoundingClientRect().right <= edge) continue;
    let boxed = false;
    for (let a = el.parentElement; a && a !== main; a = a.parentElement) {
      if (getComputedStyle(a).overflowX !== 'visible') { boxed = true; break; }
    }
    if (!boxed && found.poking.length < 5) found.poking.push(
      el.tagName.toLowerCase() + (el.id ? '#' + el.id : '')
      + (typeof el.className === 'string' && el.className.trim()
         ? '.' + el.className.trim().split(/\\s+/).join('.') : ''));
  }
  return found;
}"""


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One console for every role (its users, sandboxes and release are only read), served on
    a loopback port: one user per role, a running and a finished sandbox of alice's (its
    outbox holds a long path), a release request of it, a project with a long name and a
    terminal session, so each kind of page with an id has one to open."""
    from werkzeug.serving import make_server

    home = tmp_path_factory.mktemp("layout")
    settings = Settings.from_env(home=home / "home", testing=True,
                                 login_rate="1000 per minute", refusal_rate="100000 per minute")
    backend = make_fake_backend(settings)
    core = Sealroom(settings, backend=backend)
    core.engine_watch.settle_s = 0
    images.register_image(core, OPERATOR, "base", "sealroom/base:test", "sha256:" + "ab" * 32)
    datasets.register_dataset(core, OPERATOR, write_dataset(home / "src"), "demo",
                              ["role:engineer"])
    app = create_app(sealroom=core)
    _install(app.test_client(), core, backend)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join()
    server.server_close()
    core.close()


def _install(client: FlaskClient, core: Sealroom, backend: FakeBackend) -> None:
    for name, role in PEOPLE.items():
        accounts.create_user(core, OPERATOR, name, role, PASSWORD)
    alice = bearer(accounts.create_token(core, OPERATOR, "alice"))
    created = client.post("/api/v1/projects", headers=alice,
                          json={"name": LONG_PROJECT, "quota_mb": 16})
    assert created.status_code == 201, created.get_json()
    for _ in range(2):
        created = client.post("/api/v1/sandboxes", headers=alice,
                              json={"dataset": "demo", "example": "mlp"})
        assert created.status_code == 201, created.get_json()
    finished = created.get_json()["id"]
    backend.finish(backend.handle_of(finished), exit_code=0)
    outbox = core.settings.sandboxes_dir / finished / "outbox"
    (outbox / LONG_NAME).parent.mkdir(parents=True)
    (outbox / LONG_NAME).write_bytes(safetensors_bytes({"w": [0.5, -1.25, 3.0]}))
    (outbox / "metrics.json").write_bytes(json.dumps({"accuracy": 0.9}).encode())
    supervisor_pass(core)  # after the files exist: the exit schedules the hashing
    requested = client.post("/api/v1/releases", headers=alice, json={
        "sandbox": finished, "files": [LONG_NAME, "metrics.json"],
        "justification": "Weights for the methods section; " + "no rows, only weights " * 8})
    assert requested.status_code == 201, requested.get_json()
    record_terminal_session(core, sandbox_id=finished)


def _kind(url: str) -> str:
    """A page's kind: its path with ids starred, and whether it has a query (a filtered or
    later page of a list, a diff: one of them is measured, the template is the same)."""
    parts = urlsplit(url)
    path = "/".join("*" if _ID.match(s) else s for s in parts.path.split("/"))
    return path + ("?" if parts.query else "")


def _is_page(url: str, origin: str) -> bool:
    parts = urlsplit(url)
    return (f"{parts.scheme}://{parts.netloc}" == origin and not NOT_PAGES.search(parts.path)
            and not parts.path.startswith(("/api/", "/static/", "/logout")))


def _check(page: Page, width: int, url: str) -> list[str]:
    """What is wrong with the open page at this width (empty: nothing)."""
    found = page.evaluate(_MEASURE)
    problems = []
    if found["scroll"] > found["inner"]:
        problems.append(f"{url} at {width}px scrolls sideways: "
                        f"scrollWidth {found['scroll']} > {found['inner']}")
    if not found["logout"]:
        problems.append(f"{url} at {width}px: Log out is not in view ({found['box']})")
    if width > WIDTHS[0] and found["poking"]:
        problems.append(f"{url} at {width}px: past the page's column: {found['poking']}")
    return problems


def _crawl(page: Page, origin: str) -> Iterator[str]:
    """Every page reachable from home by links, one of each kind, breadth first; each is
    yielded while open (at the page's viewport)."""
    queue, seen = [f"{origin}/"], set()
    while queue:
        url = queue.pop(0)
        if _kind(url) in seen:
            continue
        seen.add(_kind(url))
        assert len(seen) <= MAX_PAGES, f"more than {MAX_PAGES} kinds of page: {sorted(seen)}"
        response = page.goto(url)
        assert response is not None and response.ok, f"{url}: {response and response.status}"
        if not response.headers.get("content-type", "").startswith("text/html"):
            continue
        yield url
        for link in page.evaluate(_LINKS):
            link = urljoin(url, link).split("#")[0]
            if _is_page(link, origin) and _kind(link) not in seen:
                queue.append(link)


@pytest.mark.parametrize("role", list(ROLES))
def test_every_page_fits_a_phone_and_a_wide_screen(
        role: str, browser: Browser, console: str) -> None:
    context = browser.new_context(base_url=console,
                                  viewport={"width": WIDTHS[0], "height": HEIGHT})
    context.set_default_timeout(15_000)
    page = context.new_page()
    try:
        log_in(page, ROLES[role])
        expect(page.get_by_role("button", name="Log out")).to_be_visible()
        problems: list[str] = []
        visited = []
        for url in _crawl(page, console):
            visited.append(url)
            problems += _check(page, WIDTHS[0], url)
            for width in WIDTHS[1:]:
                page.set_viewport_size({"width": width, "height": HEIGHT})
                problems += _check(page, width, url)
            page.set_viewport_size({"width": WIDTHS[0], "height": HEIGHT})
    finally:
        context.close()
    kinds = {_kind(u) for u in visited}
    assert WITH_IDS[role] <= kinds, sorted(kinds)
    assert not problems, "\n".join(problems)
