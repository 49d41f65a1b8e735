"""Red team, insider: an engineer's own code tries to carry dataset rows out before approval.

probes/insider_probe.py runs in a real sandbox launched through the console's HTTP API against
the real engine, with 300 patient rows mounted. The test then collects, as the engineer,
everything the console answers before any approval (API JSON, logs, outbox listings, release
answers, HTML pages) and searches it for rows, verbatim and decoded. The channels, and which
side of the rule each must be on:

- outbox file names: budgeted bytes (a name outside the pattern is withheld: the console's
  label `file 17 (name withheld)` is composed text; a shown name spends the ledger);
- check reasons (release answers, release JSON and pages): console-composed text only;
- sandbox JSON and status, error answers: console-composed text only;
- logs, during and after Docker's log rotation (json-file, 2 files of 50 MB, see
  sandbox/hardening.py: 160 MiB rotates it): budgeted bytes;
- the listing races (symlink swapped to /etc, FIFO, 10 TiB sparse file): no bytes at all from
  outside the outbox, and no request hangs.
The sandbox runs once per sandbox runtime (runc, then gVisor: the policy marks the patients
dataset `isolation: gvisor`), about a minute each; each test asserts one property of what
was collected. Residual by design, not asserted: numbers (file sizes and counts, exit code,
durations) and information packed densely (compressed) inside the budgeted bytes. A known
residual of the leak scan, requested and printed but not asserted: a row's fields as separate
safetensors metadata values under keys of letters and digits (`meta_fields_keyed`).
"""

from __future__ import annotations

import hashlib
import html
import json
import random
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import pytest
import requests

from console.core import Sealroom
from console.services import accounts, datasets, images
from console.settings import Settings
from sandbox.backend import LABEL_INSTALLATION, LABEL_SANDBOX
from sandbox.hardening import ENGINE_RUNTIMES
from sandbox.spec import Runtime
from tests.helpers import OPERATOR, PASSWORD, change_policy, recorded
from tests.security.rowfinder import find_rows

pytestmark = pytest.mark.docker

PROBE = Path(__file__).parent / "probes" / "insider_probe.py"
#: The ledger's limits for this installation: small, so the budget is visibly what binds.
PER_SANDBOX_BYTES = 8192
PER_USER_DAILY_BYTES = 1 << 20
LOG_MIB = 160
ROWS = 300
BUDGET_RULES = {"disclosure.per_sandbox_bytes", "disclosure.per_user_daily_bytes"}
LIST_RULE = "disclosure.outbox.list_while_running"
CONDITIONS = ("diabetes type 2", "hypertension", "asthma moderate", "chronic kidney disease",
              "atrial fibrillation", "major depression", "copd stage 2", "migraine")


# --- the dataset ----------------------------------------------------------------------------


def patient_rows(count: int = ROWS, seed: int = 300) -> list[str]:
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        born = f"{rng.randrange(1930, 2005)}-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}"
        condition = rng.choice(CONDITIONS)
        rows.append(f"P{i:05d},{born},{rng.choice('MF')},{condition},{rng.uniform(1, 40):.1f}")
    return rows


# --- what the engineer saw ------------------------------------------------------------------


@dataclass
class Seen:
    """One answer the console gave a person, kept whole."""

    channel: str
    path: str
    status: int
    text: str
    request_id: str
    seconds: float
    body: Any = None  # parsed JSON, when it was JSON

    def views(self) -> list[str]:
        """The text as sent, and with the transport's escaping undone."""
        found = [self.text]
        if self.body is not None:
            found.append(json.dumps(self.body, ensure_ascii=False))
        elif "<" in self.text:
            found.append(html.unescape(self.text))
        return found


class Client:
    """One person talking to the console over HTTP; every answer is kept."""

    def __init__(self, base: str, token: str | None = None) -> None:
        self.base = base
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"
        self.seen: list[Seen] = []

    def call(self, method: str, path: str, channel: str, timeout: float = 30,
             **kwargs: Any) -> Seen:
        started = time.monotonic()
        try:
            response = self.session.request(method, self.base + path, timeout=timeout, **kwargs)
        except requests.Timeout:
            # kept as an answer (status 0) so the attack goes on and the tests say what hung
            seen = Seen(channel, path, 0, "", "", time.monotonic() - started)
            self.seen.append(seen)
            return seen
        body = None
        if response.headers.get("Content-Type", "").startswith("application/json"):
            body = response.json()
        seen = Seen(channel, path, response.status_code, response.text,
                    response.headers.get("X-Request-Id", ""), time.monotonic() - started, body)
        self.seen.append(seen)
        return seen

    def get(self, path: str, channel: str, timeout: float = 30) -> Seen:
        return self.call("GET", path, channel, timeout)

    def login(self, name: str) -> None:
        page = self.session.get(self.base + "/login", timeout=10).text
        token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page)
        assert token, "login form has no CSRF token"
        answer = self.session.post(self.base + "/login", timeout=10, data={
            "username": name, "password": PASSWORD, "csrf_token": token.group(1)})
        assert answer.status_code in (200, 302, 303) and "/login" not in answer.url, answer.url


def texts_of(seen: list[Seen]) -> list[str]:
    return [view for s in seen for view in s.views()]


# --- the installation, once for the module ----------------------------------------------


@dataclass
class Installation:
    core: Sealroom
    base: str
    tokens: dict[str, str]
    rows: list[str]
    passwd_sha256: str


@pytest.fixture(scope="module")
def installation(tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient,
                 base_image: Any, sandbox_runtime: Runtime) -> Iterator[Installation]:
    """A console served for real (waitress, supervisor running) with its own data directory,
    the users of the scenario and the patients dataset granted to the engineer, its
    sandboxes on `sandbox_runtime` by the dataset's `isolation`."""
    from waitress.server import create_server

    from console.app import create_app

    home = tmp_path_factory.mktemp("insider")
    settings = Settings.from_env(home=home / "home", testing=True,
                                 login_rate="1000 per minute", refusal_rate="100000 per minute",
                                 supervise_interval_s=0.5)
    core = Sealroom(settings)
    images.register_image(core, OPERATOR, "base", base_image.tag, base_image.digest)
    tokens = {}
    for name, role in (("alice", "engineer"), ("bob", "engineer"),
                       ("sofia", "security_officer"), ("aude", "auditor")):
        accounts.create_user(core, OPERATOR, name, role, PASSWORD)
        tokens[name] = accounts.create_token(core, OPERATOR, name)
    rows = patient_rows()
    source = home / "patients"
    source.mkdir()
    (source / "patients.csv").write_text(
        "id,born,sex,condition,score\n" + "".join(f"{r}\n" for r in rows))
    datasets.register_dataset(core, OPERATOR, source, "patients", ["alice"])
    change_policy(core, {"disclosure": {
        "per_sandbox_bytes": PER_SANDBOX_BYTES, "per_user_daily_bytes": PER_USER_DAILY_BYTES,
        "outbox": {"list_while_running": False}},
        "datasets": {"patients": {"isolation": str(sandbox_runtime)}}},
        "insider red team: a small budget")

    server = create_server(create_app(sealroom=core, supervise=True), host="127.0.0.1",
                           port=0, threads=8)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    yield Installation(core, f"http://127.0.0.1:{server.effective_port}", tokens, rows,
                       hashlib.sha256(Path("/etc/passwd").read_bytes()).hexdigest())
    server.close()
    label = f"{LABEL_INSTALLATION}={settings.installation_id()}"
    for container in docker_client.containers.list(all=True, filters={"label": label}):
        container.remove(force=True)
    core.close()


# --- the attack, once for the module --------------------------------------------------------


@dataclass
class Bystander:
    """Another engineer (and the health check) asking the console, all along the attack."""

    answers: list[tuple[str, float, str]] = field(default_factory=list)  # path, s, outcome
    stop: threading.Event = field(default_factory=threading.Event)

    def watch(self, base: str, token: str) -> None:
        session = requests.Session()
        while not self.stop.is_set():
            for path, headers in (("/api/v1/sandboxes", {"Authorization": f"Bearer {token}"}),
                                  ("/healthz", {})):
                started = time.monotonic()
                try:
                    outcome = str(session.get(base + path, headers=headers, timeout=5)
                                  .status_code)
                except requests.RequestException as exc:
                    outcome = type(exc).__name__
                self.answers.append((path, time.monotonic() - started, outcome))
            self.stop.wait(0.5)  # pacing the bystander, not waiting for anything


@dataclass
class Attack:
    sandbox_id: str
    engineer: Client
    browser: Client
    officer: Client
    report: dict[str, Any]
    final: dict[str, Any]
    rotated: bool
    listing: dict[str, Any] | None
    releases: dict[str, Seen]
    disclosure: list[Seen]
    bystander: Bystander
    spent_after_reread: tuple[Any, Any]
    sparse_listing: Seen
    sparse_release: Seen
    engine_runtime: str  # of the probe's container, as the engine reported it

    def seen(self, *channels: str) -> list[Seen]:
        everything = self.engineer.seen + self.browser.seen
        return [s for s in everything if not channels or s.channel in channels]


def _poll(condition: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _launch(engineer: Client, mode: str) -> str:
    config = json.dumps({"mode": mode, "dataset": "patients", "log_mib": LOG_MIB,
                         "wait_s": 300})
    request = {"dataset": "patients", "command": f"python insider_probe.py '{config}'",
               "limits": {"cpus": 1, "memory_mb": 1024, "timeout_s": 900}}
    seen = engineer.call("POST", "/api/v1/sandboxes", "sandbox", data={
        "request": json.dumps(request)}, files={"code": ("insider_probe.py", PROBE.read_bytes())})
    assert seen.status == 201, seen.text
    return str(seen.body["id"])


@pytest.fixture(scope="module")
def attack(installation: Installation, docker_client: docker.DockerClient) -> Attack:
    bystander = Bystander()
    watcher = threading.Thread(target=bystander.watch,
                               args=(installation.base, installation.tokens["bob"]),
                               daemon=True)
    watcher.start()
    try:
        return _attack(installation, docker_client, bystander)
    finally:
        bystander.stop.set()
        watcher.join(timeout=10)


def _attack(installation: Installation, docker_client: docker.DockerClient,
            bystander: Bystander) -> Attack:
    """The engineer's side of the attack, in order; every answer is kept."""
    base, core = installation.base, installation.core
    engineer = Client(base, installation.tokens["alice"])
    officer = Client(base, installation.tokens["sofia"])
    sandbox_id = _launch(engineer, "insider")
    # A second, short sandbox leaves a 10 TiB sparse file (and the FIFO, the links) at its end.
    sparse_id = _launch(engineer, "sparse")
    workspace = core.storage.workspace(sandbox_id)

    def running_and(name: str) -> Any:
        status = engineer.get(f"/api/v1/sandboxes/{sandbox_id}", "sandbox").body["status"]
        assert status in ("starting", "running"), f"the probe ended early: {status}"
        return _read_json(workspace / name)

    report = _poll(lambda: running_and("ready.json"), 120, "the probe's outbox")

    # 1. The first log lines, read twice: the second read is the same bytes and is free.
    engineer.get(f"/api/v1/sandboxes/{sandbox_id}/logs?offset=0", "logs")
    spent_once = officer.get("/api/v1/disclosure?user=alice", "officer")
    engineer.get(f"/api/v1/sandboxes/{sandbox_id}/logs?offset=0", "logs")
    spent_twice = officer.get("/api/v1/disclosure?user=alice", "officer")

    # 2. The outbox while running: refused by default; then, allowed by policy, listed
    #    again and again while the probe swaps a directory for a link to /etc.
    outbox = f"/api/v1/sandboxes/{sandbox_id}/outbox"
    hung = engineer.get(outbox, "outbox", timeout=10).status == 0
    change_policy(core, {"disclosure": {"outbox": {"list_while_running": True}}},
                  "insider red team: listing during the race")
    for _ in range(15):
        # once one hung, asking again would only tie up more of the console's threads
        hung = hung or engineer.get(outbox, "outbox", timeout=10).status == 0
    change_policy(core, {"disclosure": {"outbox": {"list_while_running": False}}},
                  "insider red team: back to the default")
    (workspace / "race-done").touch()

    # 3. The log flood: offset 0 and other offsets, over and over, across rotation.
    (container,) = docker_client.containers.list(
        filters={"label": f"{LABEL_SANDBOX}={sandbox_id}"})
    log_path = Path(container.attrs["LogPath"])
    engine_runtime = str(container.attrs["HostConfig"]["Runtime"])
    offsets = [4096, 1 << 20, 30 << 20, -4096]
    reads, rotated, deadline, written = 0, False, time.monotonic() + 300, -1

    def advanced() -> Any:
        progress = _read_json(workspace / "progress") or {}
        moved = progress.get("done") or progress.get("bytes", 0) >= written + (12 << 20)
        return progress if moved else None

    while time.monotonic() < deadline:
        # read again each time the probe has written another 12 MiB (or finished)
        progress = _poll(advanced, 120, "the probe's log to grow")
        written = progress["bytes"]
        engineer.get(f"/api/v1/sandboxes/{sandbox_id}/logs?offset=0", "logs", timeout=60)
        engineer.get(f"/api/v1/sandboxes/{sandbox_id}/logs?offset={offsets[reads % 4]}",
                     "logs", timeout=60)
        reads += 1
        rotated = rotated or Path(f"{log_path}.1").exists()
        if progress.get("done"):
            # once more after the last byte, in JSON form
            engineer.get(f"/api/v1/sandboxes/{sandbox_id}/logs?offset=0&format=json", "logs",
                         timeout=60)
            break
    (workspace / "log-done").touch()
    # The probe waits for the report to be read: its workspace goes when it ends.
    report = _poll(lambda: running_and("report.json"), 120, "the probe's report")
    (workspace / "report-read").touch()
    final = _poll(lambda: (lambda b: b if b["status"] not in ("starting", "running") else None)(
        engineer.get(f"/api/v1/sandboxes/{sandbox_id}", "sandbox").body), 120, "the probe's end")

    # 4. After the end: the saved log, then the outbox until it is hashed (or over its cap).
    for offset in (0, -4096, 4096):
        engineer.get(f"/api/v1/sandboxes/{sandbox_id}/logs?offset={offset}", "logs")

    def listed(sandbox: str) -> Any:
        seen = engineer.get(f"/api/v1/sandboxes/{sandbox}/outbox", "outbox", timeout=10)
        if seen.status != 200:
            return seen
        return seen if seen.body.get("state") != "hashing" else None

    last = _poll(lambda: listed(sandbox_id), 120, "the outbox to be hashed")
    listing = last.body if last.status == 200 else None
    _poll(lambda: engineer.get(f"/api/v1/sandboxes/{sparse_id}", "sandbox").body["status"]
          not in ("starting", "running"), 120, "the sparse file's sandbox to end")
    sparse_listing = _poll(lambda: listed(sparse_id), 120, "the sparse outbox to be listed")
    sparse_release = engineer.call(
        "POST", "/api/v1/releases", "release", timeout=60,
        json={"sandbox": sparse_id, "files": ["ok.json"], "justification": "for the paper"})

    # 5. Release requests: every file the probe made to carry rows, the traps, the control.
    releases: dict[str, Seen] = {}
    for name, kind in sorted(report["files"].items()):
        if kind in ("encoded", "clean", "trap", "residual"):
            releases[name] = engineer.call(
                "POST", "/api/v1/releases", "release", timeout=60,
                json={"sandbox": sandbox_id, "files": [name], "justification": "for the paper"})
    withheld = [f for f in (listing or {}).get("files", []) if f.get("withheld")]
    for entry in withheld[:3]:
        key = f"#{entry['position']}"
        releases[key] = engineer.call(
            "POST", "/api/v1/releases", "release", timeout=60,
            json={"sandbox": sandbox_id, "files": [key], "justification": "for the paper"})
    for seen in list(releases.values()):
        if seen.status == 201:
            engineer.get(f"/api/v1/releases/{seen.body['id']}", "release")
    engineer.get("/api/v1/releases", "release")
    engineer.get("/api/v1/sandboxes", "sandbox")
    engineer.get(f"/api/v1/sandboxes/{sandbox_id}", "sandbox")

    # 6. The pages, through the login form as a person would.
    browser = Client(base)
    browser.login("alice")
    browser.get("/sandboxes", "page")
    browser.get(f"/sandboxes/{sandbox_id}", "page-sandbox")
    browser.get(f"/sandboxes/{sandbox_id}/live?offset=0&outbox=1", "live")
    browser.get("/releases", "page-release")
    for seen in releases.values():
        if seen.status == 201:
            browser.get(f"/releases/{seen.body['id']}", "page-release")

    disclosure = [spent_once, spent_twice, officer.get("/api/v1/disclosure?user=alice",
                                                       "officer")]
    return Attack(sandbox_id, engineer, browser, officer, report, final, rotated, listing,
                 releases, disclosure, bystander, (spent_once.body, spent_twice.body),
                 sparse_listing, sparse_release, engine_runtime)


# --- reading the ledger's answer ------------------------------------------------------------


def spent_on(body: Any, sandbox_id: str) -> int | None:
    """Bytes the ledger counts for this sandbox, from GET /api/v1/disclosure?user=."""
    if isinstance(body, dict):
        if sandbox_id in (body.get("sandbox"), body.get("id"), body.get("sandbox_id")):
            for key in ("bytes", "spent", "spent_bytes", "bytes_shown", "shown_bytes"):
                if isinstance(body.get(key), int):
                    return int(body[key])
        if isinstance(body.get(sandbox_id), int):
            return int(body[sandbox_id])
        if isinstance(body.get(sandbox_id), dict):
            return spent_on({**body[sandbox_id], "sandbox": sandbox_id}, sandbox_id)
        values = list(body.values())
    elif isinstance(body, list):
        values = body
    else:
        return None
    for value in values:
        found = spent_on(value, sandbox_id)
        if found is not None:
            return found
    return None


def _shown_names(listing: Seen) -> list[str]:
    return [f["name"] for f in (listing.body or {}).get("files", []) if f.get("name")]


def _without_names(seen: Seen) -> str:
    """An outbox listing with the names (budgeted) taken out: what is left is composed text."""
    body = json.loads(json.dumps(seen.body))
    for entry in body.get("files", []) if isinstance(body, dict) else []:
        if entry.get("name") is not None:  # a shown name is its own label
            entry.pop("label", None)
        entry.pop("name", None)
    return json.dumps(body, ensure_ascii=False)


# --- the assertions -------------------------------------------------------------------------


def test_rows_read_before_approval_stay_within_the_budget(attack: Attack,
                                                          installation: Installation) -> None:
    rows = installation.rows
    shortest = min(len(r) for r in rows)
    found = find_rows(texts_of(attack.seen()), rows)
    spent = spent_on(attack.disclosure[-1].body, attack.sandbox_id)
    print(f"\nrows found before approval: {len(found.rows)} whole, {len(found.ids)} by id; "
          f"ledger: {spent} bytes for {attack.sandbox_id}; budget {PER_SANDBOX_BYTES} bytes "
          f"= {PER_SANDBOX_BYTES // shortest} rows of {shortest} bytes")
    assert attack.disclosure[-1].status == 200, attack.disclosure[-1].text
    assert spent is not None, attack.disclosure[-1].text
    assert spent <= PER_SANDBOX_BYTES
    assert len(found.rows) <= spent // shortest, sorted(found.rows)[:20]
    assert len(found.rows) <= PER_SANDBOX_BYTES // shortest


def test_console_composed_answers_carry_no_row(attack: Attack,
                                               installation: Installation) -> None:
    """Sandbox JSON, check reasons, release JSON and pages, refusals: not a row, not an id,
    under any encoding; and no verbatim id anywhere but in budgeted log text."""
    composed = attack.seen("sandbox", "release", "page-release")
    composed += [s for s in attack.seen() if s.status >= 400]
    found = find_rows(texts_of(composed), installation.rows)
    assert not found.ids, {i: sorted(f) for i, f in list(found.ids.items())[:10]}
    listings = [s for s in attack.seen("outbox") if s.status == 200]
    found = find_rows([_without_names(s) for s in listings], installation.rows)
    assert not found.ids, "an outbox listing carries rows outside the names"
    verbatim = find_rows([v for s in attack.seen("outbox", "page-sandbox", "page")
                          for v in s.views()], installation.rows)
    assert not {i for i, forms in verbatim.ids.items() if forms & {"verbatim", "utf-16", "url"}}, \
        "a row-named file's name is shown"


def test_every_encoded_file_fails_its_checks(attack: Attack) -> None:
    assert attack.releases, "no release was requested"
    statuses = {}
    for name, seen in attack.releases.items():
        kind = attack.report["files"].get(name, "row-name")
        statuses[name] = (kind, seen.status, (seen.body or {}).get("status"))
    print("\nrelease requests:", json.dumps(statuses, indent=1))
    for name, (kind, code, status) in statuses.items():
        if kind == "encoded":
            assert code == 201 and status == "checks_failed", (name, code, status)
        elif kind == "clean":
            assert code == 201 and status == "in_review", (name, code, status)
        elif kind == "residual":  # known and documented: reported above, not asserted
            assert code != 0, f"{name}: no answer"
        else:  # traps and withheld row names: refused outright, or checked and failed
            assert code in (400, 404, 409, 413) or status == "checks_failed", (name, code)
    assert sum(1 for k, _, _ in statuses.values() if k == "encoded") >= 15
    failed = [s.body for s in attack.releases.values() if s.status == 201
              and s.body.get("status") == "checks_failed"]
    for body in failed:
        results = body["checks"]["results"]
        assert any(not r["passed"] for r in results), body["id"]


def test_the_log_budget_holds_across_rotation(attack: Attack, sandbox_runtime: Runtime) -> None:
    """Under gVisor the same budget holds over what reaches the log; but Debian 12's runsc
    drops output written faster than the engine reads it (tests/integration/test_gvisor.py::
    test_output_written_in_a_burst_reaches_the_log), so the flood never grows the log to the
    rotation size there: rotation itself is Docker's, the same for both runtimes, and is
    proven by the runc run."""
    if sandbox_runtime is Runtime.RUNC:
        assert attack.rotated, "Docker never rotated the log: the test proved nothing"
    logs = attack.seen("logs")
    assert all(s.status in (200, 403) for s in logs), [(s.path, s.status) for s in logs]
    refused = [s for s in logs if s.status == 403]
    assert refused, "the budget never ran out"
    for seen in refused:
        assert seen.body["error"]["code"] == "policy_denied", seen.text
        assert seen.body["error"]["rule"] in BUDGET_RULES, seen.text
    assert any(s.body["error"]["rule"] == "disclosure.per_sandbox_bytes" for s in refused)
    # Every distinct record shown, counted once at its longest: at most the budget. Once the
    # budget is spent, no read (at any offset, rotated or saved log) shows a new record.
    longest: dict[str, str] = {}  # record number (or fragment) -> the longest text shown
    exhausted = False
    for seen in logs:
        if seen.status == 403:
            exhausted = exhausted or seen.body["error"]["rule"] == "disclosure.per_sandbox_bytes"
            continue
        text = seen.body["log"] if seen.body is not None else seen.text
        records = {}
        for line in filter(None, text.split("\n")):
            numbered = re.match(r"^(H\d{4}|\d{8}) ", line)
            records[numbered.group(1) if numbered else line] = line
        if exhausted:
            assert set(records) <= set(longest), f"{seen.path} showed new records once spent"
        for key, line in records.items():
            if len(line) > len(longest.get(key, "")):
                longest[key] = line
    # A fragment (a read starting mid-record) that lies inside a record already counted is
    # not counted twice.
    counted = [t for k, t in longest.items()
               if k != t or not any(k in other for other in longest.values() if other != k)]
    shown = sum(len(t) + 1 for t in counted)
    print(f"\nlog: {len(logs)} reads, {len(refused)} refused, {len(counted)} distinct records, "
          f"{shown} bytes shown")
    assert shown <= PER_SANDBOX_BYTES + len(logs), shown
    # Reading the same bytes again did not spend.
    once, twice = (spent_on(body, attack.sandbox_id) for body in attack.spent_after_reread)
    assert once is not None and once == twice, attack.spent_after_reread


def test_listing_never_follows_links_nor_hangs(attack: Attack,
                                               installation: Installation) -> None:
    listings = attack.seen("outbox")
    hung = [s.path for s in attack.seen("outbox", "live", "page-sandbox", "release")
            if s.status == 0]
    assert not hung, f"no answer within the request timeout: {hung}"
    first = listings[0]  # asked while the probe ran, under the default policy
    assert first.status == 403 and first.body["error"]["rule"] == LIST_RULE, first.text
    ok = [s for s in listings if s.status == 200]
    assert ok, "the outbox was never listed"
    assert attack.listing is not None and attack.listing["state"] == "ready", attack.listing
    # 10 TiB is over the hashing cap: reported at once, nothing read, nothing releasable
    assert attack.sparse_listing.status == 200, attack.sparse_listing.text
    assert attack.sparse_listing.body["state"] == "over_cap", attack.sparse_listing.text
    assert all(f["sha256"] is None for f in attack.sparse_listing.body["files"])
    assert attack.sparse_release.status == 400, attack.sparse_release.text
    for seen in ok + attack.seen("live", "page-sandbox"):
        body = seen.body or {}
        files = body.get("files") or body.get("outbox") or []
        for entry in files.get("files", []) if isinstance(files, dict) else files:
            name = entry.get("name") or ""
            assert name.rsplit("/", 1)[-1] != "passwd", entry
            # nothing from behind the links, whenever the walk met them
            assert not name.startswith("etc/"), entry
            assert not name.startswith("swap/") or name == "swap/model.safetensors", entry
            assert entry.get("sha256") != installation.passwd_sha256, entry
        assert installation.passwd_sha256 not in seen.text
        assert "root:x:0:0" not in seen.text
    slowest = max(s.seconds for s in listings)
    print(f"\noutbox: {len(listings)} listings, slowest {slowest:.2f} s; race swaps "
          f"{attack.report.get('race_swaps')}, probe errors {attack.report.get('errors')}")
    files = {f.get("name") or f["label"]: f for f in attack.listing["files"]}
    for trap in ("fifo.safetensors", "link.safetensors", "etc", "swap", "swapfile.safetensors"):
        # never opened, never followed
        assert trap not in files or files[trap]["kind"] == "ignored", files[trap]
    # at the end /outbox/swap is a link to /etc, as /outbox/etc always was
    assert not [n for n in files if n.startswith(("etc/", "swap/"))], sorted(files)


def test_outbox_names_outside_the_pattern_are_withheld(attack: Attack) -> None:
    assert attack.listing is not None
    entries = attack.listing["files"]
    withheld = [f for f in entries if f["withheld"]]
    row_named = sum(1 for k in attack.report["files"].values() if k == "row-name")
    assert len(withheld) >= row_named, f"{len(withheld)} withheld of {row_named} row names"
    pattern = re.compile(r"[A-Za-z0-9._-]{1,64}")
    for entry in entries:
        if entry["withheld"]:
            assert entry["name"] is None and "withheld" in entry["label"], entry
            assert re.fullmatch(r"file \d+ \(name withheld\)", entry["label"]), entry
        else:
            assert all(pattern.fullmatch(p) for p in entry["name"].split("/")), entry
            assert entry["name"] != "deep/a/b/c/d/deep.json", "deeper than max_depth, shown"
    assert attack.listing["entries"] <= 200


def test_other_people_are_served_during_the_attack(attack: Attack) -> None:
    answers = attack.bystander.answers
    assert answers, "the bystander never asked"
    failed = [a for a in answers if a[2] != "200"]
    slowest = max(a[1] for a in answers)
    print(f"\nbystander: {len(answers)} requests, slowest {slowest:.2f} s, failed {failed[:5]}")
    assert not failed


def test_every_refusal_is_audited(attack: Attack, installation: Installation) -> None:
    events = recorded(installation.core)
    by_request: dict[str, list[Any]] = {}
    for event in events:
        by_request.setdefault(event.request_id, []).append(event)
    refusals = [s for s in attack.seen("logs", "outbox") if s.status == 403]
    assert refusals
    for seen in refusals:
        matching = [e for e in by_request.get(seen.request_id, []) if e.outcome == "denied"]
        assert matching, f"refusal of {seen.path} ({seen.request_id}) is not audited"
        details = json.loads(matching[-1].details)
        assert details.get("rule") == seen.body["error"]["rule"], details
    for seen in attack.seen("release"):
        if seen.status in (400, 403, 404, 409):  # a trap refused at the gate's door
            assert [e for e in by_request.get(seen.request_id, []) if e.outcome == "denied"], \
                f"refused release request {seen.request_id} is not audited"
    for seen in attack.seen("outbox"):
        if seen.status != 200:
            continue
        count = sum(1 for f in seen.body["files"] if f.get("withheld"))
        if not count:
            continue
        events_of = by_request.get(seen.request_id, [])
        assert events_of, f"listing {seen.request_id} is not audited"
        details = [json.loads(e.details) for e in events_of]
        assert any(v == count for d in details for k, v in d.items() if "withheld" in k), \
            details
    # the denied events are also what the auditor reads over the API
    auditor = Client(installation.base, installation.tokens["aude"])
    page = auditor.get("/api/v1/audit/events?outcome=denied&limit=500", "auditor")
    assert page.status == 200
    assert {e["request_id"] for e in page.body["events"]} >= {s.request_id for s in refusals}


def test_the_probe_did_what_it_says(attack: Attack, sandbox_runtime: Runtime) -> None:
    """A control: the attack happened as planned, on the runtime asked, so the assertions
    above mean something."""
    assert attack.engine_runtime == ENGINE_RUNTIMES[sandbox_runtime]
    report = attack.report
    assert report.get("rows") == ROWS, report
    assert report.get("race_done_seen") and report.get("log_done_seen"), report
    assert report.get("log_bytes", 0) >= LOG_MIB << 20
    assert report.get("race_swaps", 0) > 0
    assert attack.final["status"] == "succeeded", attack.final
    kinds = [k for k in report["files"].values()]
    assert kinds.count("row-name") == 60 and kinds.count("encoded-name") == 36
