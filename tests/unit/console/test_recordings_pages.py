"""Auditors find terminal sessions and replay their recordings, through HTTP: the list and
the detail, the recording for the player and for download, the API, who may, what is audited,
and the chain status naming a recording edited or deleted after its session ended.

By the one rule, each view here is one of two kinds: the session list and detail pages (and
their API) show only text the console composed (ids, names, times, its own words, counts,
hashes); the recording is sandbox output re-shown, bytes already charged to the disclosure
ledger when the gateway sent them to the engineer, so a replay spends nothing and is audited.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from click.testing import CliRunner
from flask.testing import FlaskClient
from sqlalchemy import func
from sqlmodel import select

from audit.events import AuditAction
from console.cli import main
from console.core import Sealroom
from console.models import DisclosureItem, TerminalSession
from tests.helpers import bearer, login, record_terminal_session, recorded

Users = Callable[..., tuple[str, str]]
SECRET = b"loss=0.1234 row 17: alice@example.org\r\n"


@pytest.fixture
def auditor(make_user: Users) -> str:
    return make_user("audrey", "auditor")[1]


@pytest.fixture
def terminal(core: Sealroom) -> TerminalSession:
    return record_terminal_session(core, user="alice", sandbox_id="sb-one",
                                   output=[b"$ python train.py\r\n", SECRET[:7], SECRET[7:]])


def _ledger_total(core: Sealroom) -> int:
    with core.read() as session:
        return int(session.exec(select(func.coalesce(func.sum(DisclosureItem.bytes), 0))).one())


def test_list_and_detail_are_console_composed_text(client: FlaskClient, core: Sealroom,
                                                   auditor: str,
                                                   terminal: TerminalSession) -> None:
    """Kind: console-composed text. The list and the detail name who, where, when, why it
    ended and the counts; no byte the sandbox printed is on either page or in the API."""
    other = record_terminal_session(core, user="bob", sandbox_id="sb-two",
                                    started_at="2026-12-02T11:00:00.000000Z")
    login(client, "audrey")
    listing = client.get("/audit/sessions")
    text = listing.get_data(as_text=True)
    assert listing.status_code == 200
    assert terminal.id in text and other.id in text
    assert text.index(other.id) < text.index(terminal.id)  # newest first
    assert "loss=" not in text and "train.py" not in text
    only_bob = client.get("/audit/sessions", query_string={"user": "bob"})
    assert other.id in only_bob.get_data(as_text=True)
    assert terminal.id not in only_bob.get_data(as_text=True)
    by_sandbox = client.get("/audit/sessions", query_string={"sandbox": "sb-one"})
    assert terminal.id in by_sandbox.get_data(as_text=True)
    assert other.id not in by_sandbox.get_data(as_text=True)

    detail = client.get(f"/audit/sessions/{terminal.id}")
    page = detail.get_data(as_text=True)
    assert detail.status_code == 200
    assert terminal.recording_sha256 in page and "the engineer logged out" in page
    assert f"/audit/sessions/{terminal.id}/recording.cast" in page
    assert "loss=" not in page and 'id="recording-warning"' not in page
    csp = detail.headers["Content-Security-Policy"]
    assert "script-src 'self' 'wasm-unsafe-eval';" in csp and "unsafe-eval'" not in \
        csp.replace("'wasm-unsafe-eval'", "")
    assert "style-src 'self';" in csp  # no 'unsafe-inline' anywhere
    assert "unsafe-inline" not in csp
    assert "<script>" not in page  # the CSP allows no inline script, and there is none
    # The replay page's policy is the site's with that one source added, nothing else.
    site = listing.headers["Content-Security-Policy"]
    assert "'wasm-unsafe-eval'" not in site
    assert csp == site.replace("script-src 'self';", "script-src 'self' 'wasm-unsafe-eval';")

    views = recorded(core, AuditAction.AUDIT_VIEW.value)
    assert {"audit:sessions", f"terminal:{terminal.id}"} <= {e.target for e in views}
    assert not recorded(core, AuditAction.SSH_RECORDING_VIEW.value)  # nothing replayed yet


def test_replay_re_shows_charged_bytes_spends_nothing_and_is_audited(
        client: FlaskClient, core: Sealroom, auditor: str, terminal: TerminalSession) -> None:
    """Kind: sandbox output re-shown. The recording's bytes were charged to the disclosure
    ledger when the gateway sent them; serving them to an auditor (player or download)
    spends nothing new, and every serving is an `audit:recording:view` event."""
    spent = _ledger_total(core)
    login(client, "audrey")
    response = client.get(f"/audit/sessions/{terminal.id}/recording.cast")
    assert response.status_code == 200
    assert response.mimetype == "application/x-asciicast"
    assert response.headers["Content-Disposition"].startswith("attachment")
    assert f"{terminal.id}.cast" in response.headers["Content-Disposition"]
    body = response.get_data()
    path = core.settings.recordings_dir / terminal.recording
    assert body == path.read_bytes()
    assert json.loads(body.splitlines()[0])["version"] == 2
    assert _ledger_total(core) == spent

    views = recorded(core, AuditAction.SSH_RECORDING_VIEW.value)
    assert len(views) == 1
    assert (views[0].actor, views[0].target) == ("audrey", f"terminal:{terminal.id}")
    details = json.loads(views[0].details)
    assert details["session"] == terminal.id and details["state"] == "intact"
    assert details["chain_sha256"] == terminal.recording_sha256

    api = client.get(f"/api/v1/audit/sessions/{terminal.id}/recording",
                     headers=bearer(auditor))
    assert api.status_code == 200 and api.get_data() == body
    assert len(recorded(core, AuditAction.SSH_RECORDING_VIEW.value)) == 2
    assert _ledger_total(core) == spent


def test_api_lists_pages_and_details(client: FlaskClient, core: Sealroom, auditor: str,
                                     terminal: TerminalSession) -> None:
    """Kind: console-composed text (the fields are the console's own)."""
    for hour in range(11, 16):
        record_terminal_session(core, user="carol", sandbox_id="sb-three",
                                started_at=f"2026-12-02T{hour}:00:00.000000Z")
    first = client.get("/api/v1/audit/sessions", headers=bearer(auditor),
                       query_string={"limit": 4}).get_json()
    assert len(first["sessions"]) == 4 and first["older"]
    second = client.get(first["older"], headers=bearer(auditor)).get_json()
    ids = [s["id"] for s in first["sessions"] + second["sessions"]]
    assert len(ids) == len(set(ids)) == 6 and ids[-1] == terminal.id
    assert second["older"] is None
    carol = client.get("/api/v1/audit/sessions", headers=bearer(auditor),
                       query_string={"user": "carol"}).get_json()
    assert {s["user"] for s in carol["sessions"]} == {"carol"}

    one = client.get(f"/api/v1/audit/sessions/{terminal.id}", headers=bearer(auditor))
    body = one.get_json()
    assert one.status_code == 200
    assert (body["user"], body["sandbox"], body["member"]) == ("alice", "sb-one", "main")
    assert body["recording_state"]["state"] == "intact"
    assert body["recording_sha256"] == terminal.recording_sha256
    assert "loss=" not in one.get_data(as_text=True)
    bad = client.get("/api/v1/audit/sessions", headers=bearer(auditor),
                     query_string={"cursor": "nonsense"})
    assert bad.status_code == 400 and "cursor" in bad.get_json()["error"]["message"]


def test_unknown_sessions_are_404(client: FlaskClient, auditor: str) -> None:
    for path in ("/api/v1/audit/sessions/ssh-0000000000000000",
                 "/api/v1/audit/sessions/ssh-0000000000000000/recording"):
        response = client.get(path, headers=bearer(auditor))
        assert response.status_code == 404, path
        assert "ssh-0000000000000000" in response.get_json()["error"]["message"]
    login(client, "audrey")
    assert client.get("/audit/sessions/ssh-0000000000000000").status_code == 404
    assert client.get("/audit/sessions/ssh-0000000000000000/recording.cast").status_code == 404


def test_engineers_may_not_see_sessions(client: FlaskClient, core: Sealroom, make_user: Users,
                                        terminal: TerminalSession) -> None:
    _, engineer = make_user("eve", "engineer")
    for path in ("/api/v1/audit/sessions", f"/api/v1/audit/sessions/{terminal.id}",
                 f"/api/v1/audit/sessions/{terminal.id}/recording"):
        assert client.get(path, headers=bearer(engineer)).status_code == 403, path
    login(client, "eve")
    for path in ("/audit/sessions", f"/audit/sessions/{terminal.id}",
                 f"/audit/sessions/{terminal.id}/recording.cast"):
        response = client.get(path)
        assert response.status_code == 403, path
        assert b"loss=" not in response.get_data()
    assert not recorded(core, AuditAction.SSH_RECORDING_VIEW.value)
    _, admin = make_user("root", "admin")
    assert client.get("/api/v1/audit/sessions", headers=bearer(admin)).status_code == 200


def test_chain_status_names_an_edited_and_a_deleted_recording(
        client: FlaskClient, core: Sealroom, auditor: str, terminal: TerminalSession) -> None:
    deleted = record_terminal_session(core, user="bob", sandbox_id="sb-two")
    status = client.get("/api/v1/audit/chain", headers=bearer(auditor)).get_json()
    assert status["ok"] and status["recordings_checked"] == 2
    assert status["recording_problems"] == []

    # An insider with the files rewrites one recording and removes another.
    path = core.settings.recordings_dir / terminal.recording
    path.write_bytes(path.read_bytes().replace(b"alice@example.org", b"nobody@example.org"))
    (core.settings.recordings_dir / deleted.recording).unlink()

    status = client.get("/api/v1/audit/chain", headers=bearer(auditor)).get_json()
    assert not status["ok"] and status["first_bad_event"] is None
    problems = {p["session"]: p for p in status["recording_problems"]}
    assert problems[terminal.id]["problem"] == "changed"
    assert problems[deleted.id]["problem"] == "missing"
    for row in (terminal, deleted):
        assert row.id in problems[row.id]["message"]
        assert row.recording in problems[row.id]["message"]
        assert row.id in status["problem"]
    last = recorded(core, AuditAction.AUDIT_VERIFY.value)[-1]
    assert last.outcome == "failed" and terminal.id in last.reason

    login(client, "audrey")
    chain = client.get("/audit/chain").get_data(as_text=True)
    assert "RECORDINGS CHANGED" in chain
    assert f'href="/audit/sessions/{terminal.id}"' in chain
    assert f'href="/audit/sessions/{deleted.id}"' in chain
    assert "Terminal recordings changed" in client.get("/audit").get_data(as_text=True)

    # The changed one is still served (it is evidence), and its page and event say so.
    page = client.get(f"/audit/sessions/{terminal.id}").get_data(as_text=True)
    assert 'id="recording-warning"' in page and "was changed after the session ended" in page
    served = client.get(f"/audit/sessions/{terminal.id}/recording.cast")
    assert served.status_code == 200 and b"nobody@example.org" in served.get_data()
    view = recorded(core, AuditAction.SSH_RECORDING_VIEW.value)[-1]
    assert json.loads(view.details)["state"] == "changed"
    # The missing one cannot be replayed; its page says why.
    missing = client.get(f"/audit/sessions/{deleted.id}")
    assert "is missing" in missing.get_data(as_text=True)
    assert client.get(f"/audit/sessions/{deleted.id}/recording.cast").status_code == 404


def test_the_cli_status_names_recording_problems(core: Sealroom, terminal: TerminalSession,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEALROOM_HOME", str(core.settings.home))
    cli = CliRunner()
    ok = cli.invoke(main, ["audit", "status"])
    assert ok.exit_code == 0, ok.output
    assert "1 checked" in ok.output
    (core.settings.recordings_dir / terminal.recording).write_bytes(b"{}\n")
    bad = cli.invoke(main, ["audit", "status"])
    assert bad.exit_code == 1, bad.output
    assert terminal.id in bad.output and terminal.recording in bad.output
    assert "changed" in bad.output


def test_events_and_timeline_link_to_the_session(client: FlaskClient, core: Sealroom,
                                                 auditor: str,
                                                 terminal: TerminalSession) -> None:
    end = recorded(core, AuditAction.SSH_END.value)[-1]
    login(client, "audrey")
    page = client.get(f"/audit/events/{end.id}").get_data(as_text=True)
    assert f'id="session-link" href="/audit/sessions/{terminal.id}"' in page
    nav = client.get("/audit").get_data(as_text=True)
    assert 'href="/audit/sessions">Sessions</a>' in nav


def test_the_sandbox_timeline_shows_its_sessions(client: FlaskClient, core: Sealroom,
                                                 auditor: str, make_user: Users,
                                                 dataset: str) -> None:
    _, token = make_user("alice")
    launched = client.post("/api/v1/sandboxes", headers=bearer(token),
                           json={"dataset": dataset, "example": "mlp"})
    assert launched.status_code == 201, launched.get_json()
    sandbox_id = launched.get_json()["id"]
    session = record_terminal_session(core, user="alice", sandbox_id=sandbox_id)
    login(client, "audrey")
    page = client.get(f"/audit/timeline/sandbox/{sandbox_id}").get_data(as_text=True)
    assert "sandbox:terminal:end" in page
    assert f'href="/audit/sessions/{session.id}"' in page


def test_replay_serves_the_file_the_chain_names_not_the_row(
        client: FlaskClient, core: Sealroom, auditor: str, terminal: TerminalSession) -> None:
    """Kind: sandbox output re-shown (audited). An insider who repoints the session's row at
    another recording does not change what is replayed: the chain's event names the file."""
    other = record_terminal_session(core, user="bob", sandbox_id="sb-two",
                                    output=[b"harmless\r\n"])
    with core.transaction() as session:
        row = session.get(TerminalSession, terminal.id)
        assert row is not None
        row.recording = other.recording
        session.add(row)
    served = client.get(f"/api/v1/audit/sessions/{terminal.id}/recording",
                        headers=bearer(auditor))
    assert served.status_code == 200 and b"alice@example.org" in served.get_data()
    state = client.get(f"/api/v1/audit/sessions/{terminal.id}", headers=bearer(auditor))
    assert state.get_json()["recording_state"]["state"] == "intact"
