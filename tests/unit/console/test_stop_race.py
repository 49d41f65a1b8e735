"""A person's stop and the supervisor race to record a sandbox's end, with the fake backend:
each order of the two is forced (threads held at named points by events, never sleeps), and
in every one the sandbox ends `stopped` with the stop's reason, one end event, and a page
message that says the same. Also: a stop the engine could not carry out yet is finished by
the supervisor, or by the console's start. The real-engine test is
tests/integration/test_stop_many.py."""

from __future__ import annotations

import html
import json
import re
import threading
from collections.abc import Callable
from typing import Any

import pytest
from flask.testing import FlaskClient

from audit.events import Actor
from console.core import Caller, Sealroom
from console.models import Sandbox
from console.services import sandboxes as sandbox_service
from tests.helpers import bearer, change_policy, csrf_from, login, recorded, supervisor_pass
from tests.mocking import FakeBackend

ALICE = Caller(Actor("alice", "engineer", "token", "test"))
#: Every action that records how a sandbox ended.
END_ACTIONS = ("sandbox:sandbox:stop", "sandbox:sandbox:exit", "sandbox:sandbox:oom",
               "sandbox:sandbox:timeout", "sandbox:sandbox:lost")
WAIT_S = 30  # a bound on a wait for the other thread, never a delay


def _launch(client: FlaskClient, token: str) -> str:
    response = client.post("/api/v1/sandboxes", headers=bearer(token),
                           json={"dataset": "demo", "example": "mlp"})
    assert response.status_code == 201, response.get_json()
    assert response.get_json()["status"] == "running"
    return str(response.get_json()["id"])


def end_events(core: Sealroom, sandbox_id: str) -> list[Any]:
    """The audit events that record how the sandbox ended (a failed start counts too)."""
    return [e for e in recorded(core) if e.target == f"sandbox:{sandbox_id}"
            and (e.action in END_ACTIONS
                 or (e.action == "sandbox:sandbox:start" and e.outcome == "failed"))]


def _assert_stopped_once(core: Sealroom, client: FlaskClient, token: str, sandbox_id: str,
                         by: str = "alice") -> dict[str, Any]:
    body: dict[str, Any] = client.get(f"/api/v1/sandboxes/{sandbox_id}",
                                      headers=bearer(token)).get_json()
    assert (body["status"], body["reason"]) == ("stopped", f"stopped by {by}"), body
    ends = end_events(core, sandbox_id)
    assert [(e.action, e.actor, e.outcome, e.reason) for e in ends] == \
        [("sandbox:sandbox:stop", by, "ok", f"stopped by {by}")]
    return body


def _page_says(page: str) -> tuple[str, str]:
    """(the status badge, the flash message) of a sandbox page."""
    badge = re.search(r'<span id="status" class="status ([a-z_]+)">', page)
    flash = re.search(r'<p class="flash info" role="status">([^<]*)</p>', page)
    assert badge and flash, page
    return badge.group(1), html.unescape(flash.group(1))


class Held:
    """A point a thread stops at until the test lets it go on."""

    def __init__(self) -> None:
        self.reached = threading.Event()
        self.go = threading.Event()

    def stop_here(self) -> None:
        self.reached.set()
        assert self.go.wait(WAIT_S), "never let go"

    def wait_reached(self) -> None:
        assert self.reached.wait(WAIT_S), "the other thread never got there"


class PageStop:
    """Alice's Stop button on the sandbox's page, pressed in a thread of its own."""

    def __init__(self, client: FlaskClient, sandbox_id: str) -> None:
        self.client, self.sandbox_id = client, sandbox_id
        self.token = csrf_from(client, f"/sandboxes/{sandbox_id}")
        self.page = ""
        self.thread = threading.Thread(target=self._press)

    def _press(self) -> None:
        response = self.client.post(f"/sandboxes/{self.sandbox_id}/stop",
                                    data={"csrf_token": self.token}, follow_redirects=True)
        assert response.status_code == 200
        self.page = response.get_data(as_text=True)

    def start(self) -> None:
        self.thread.start()

    def join(self) -> str:
        self.thread.join(WAIT_S)
        assert not self.thread.is_alive()
        return self.page


def _engine_stop_hook(fake_backend: FakeBackend, monkeypatch: pytest.MonkeyPatch, *,
                      before: Held | None = None, after: Held | None = None) -> None:
    """Hold the thread that asks the engine to stop the sandbox first (the person's), just
    before or just after the engine stops it; others pass straight through."""
    real = fake_backend.stop
    first = threading.Lock()

    def stop(state: Any, **kwargs: Any) -> None:
        mine = first.acquire(blocking=False)
        if mine and before:
            before.stop_here()
        real(state, **kwargs)
        if mine and after:
            after.stop_here()

    monkeypatch.setattr(fake_backend, "stop", stop)


def _in_supervisor_poll(fake_backend: FakeBackend, monkeypatch: pytest.MonkeyPatch,
                        meanwhile: Callable[[], None]) -> None:
    """Run `meanwhile` inside the supervisor's first poll, after it has read the sandbox's
    row (as it stood then) and before the engine answers it."""
    real = fake_backend.poll
    armed = [True]
    supervisor = threading.current_thread()

    def poll(state: Any) -> Any:
        if armed[0] and threading.current_thread() is supervisor:
            armed[0] = False
            meanwhile()
        return real(state)

    monkeypatch.setattr(fake_backend, "poll", poll)


# --- each order of the race ---------------------------------------------------------------


def test_the_supervisor_sees_the_exit_before_the_stop_records_it(
        client: FlaskClient, core: Sealroom, alice: str, fake_backend: FakeBackend,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine has stopped the container (exit 143); the supervisor looks before the
    person's request gets to record anything: the bug's order ("failed", "exited with code
    143" next to "Sandbox stopped.")."""
    sandbox_id = _launch(client, alice)
    login(client, "alice")
    stopped = Held()
    _engine_stop_hook(fake_backend, monkeypatch, after=stopped)
    press = PageStop(client, sandbox_id)
    press.start()
    stopped.wait_reached()
    supervisor_pass(core)  # sees exit code 143 and records the end first
    stopped.go.set()
    badge, message = _page_says(press.join())
    body = _assert_stopped_once(core, client, alice, sandbox_id)
    assert body["exit_code"] == 143
    assert (badge, message) == ("stopped", f"Sandbox {sandbox_id} stopped by alice.")


def test_the_supervisor_finishes_a_stop_the_engine_was_not_told_of_yet(
        client: FlaskClient, core: Sealroom, alice: str, fake_backend: FakeBackend,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The stop is recorded; before the person's request reaches the engine, the supervisor
    sees the sandbox stopping and still running, and stops it itself."""
    sandbox_id = _launch(client, alice)
    login(client, "alice")
    recorded_stop = Held()
    _engine_stop_hook(fake_backend, monkeypatch, before=recorded_stop)
    press = PageStop(client, sandbox_id)
    press.start()
    recorded_stop.wait_reached()
    assert sandbox_service.get(core, ALICE, sandbox_id).status == "stopping"
    supervisor_pass(core)
    assert sandbox_service.get(core, ALICE, sandbox_id).status == "stopped"
    recorded_stop.go.set()
    badge, message = _page_says(press.join())
    _assert_stopped_once(core, client, alice, sandbox_id)
    assert (badge, message) == ("stopped", f"Sandbox {sandbox_id} stopped by alice.")
    assert fake_backend.sandboxes == {}


def test_a_supervisor_that_read_the_row_before_the_stop_records_the_stop(
        client: FlaskClient, core: Sealroom, alice: str, fake_backend: FakeBackend,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The supervisor read the row (running) before the stop was recorded and sees exit code
    143 after the engine stopped it; it records its end before the person's request does.
    The row, not what the supervisor read, decides."""
    sandbox_id = _launch(client, alice)
    login(client, "alice")
    stopped = Held()
    _engine_stop_hook(fake_backend, monkeypatch, after=stopped)
    press = PageStop(client, sandbox_id)

    def the_person_presses_stop() -> None:
        press.start()
        stopped.wait_reached()

    _in_supervisor_poll(fake_backend, monkeypatch, the_person_presses_stop)
    supervisor_pass(core)
    assert sandbox_service.get(core, ALICE, sandbox_id).status == "stopped"
    stopped.go.set()
    badge, message = _page_says(press.join())
    _assert_stopped_once(core, client, alice, sandbox_id)
    assert (badge, message) == ("stopped", f"Sandbox {sandbox_id} stopped by alice.")


def test_a_stop_recorded_first_stays_the_one_end(
        client: FlaskClient, core: Sealroom, alice: str, fake_backend: FakeBackend,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The other way round: the supervisor read the row before the stop, and the person's
    stop is recorded in full before the supervisor hears from the engine."""
    sandbox_id = _launch(client, alice)
    login(client, "alice")
    press = PageStop(client, sandbox_id)

    def the_person_stops_it() -> None:
        press.start()
        press.join()

    _in_supervisor_poll(fake_backend, monkeypatch, the_person_stops_it)
    supervisor_pass(core)
    supervisor_pass(core)
    badge, message = _page_says(press.page)
    _assert_stopped_once(core, client, alice, sandbox_id)
    assert (badge, message) == ("stopped", f"Sandbox {sandbox_id} stopped by alice.")


# --- a stop the engine could not carry out yet --------------------------------------------


def test_a_stop_while_the_engine_is_down_is_recorded_and_finished_when_it_answers(
        client: FlaskClient, core: Sealroom, alice: str, fake_backend: FakeBackend) -> None:
    sandbox_id = _launch(client, alice)
    login(client, "alice")
    token = csrf_from(client, f"/sandboxes/{sandbox_id}")
    fake_backend.engine_up = False
    page = client.post(f"/sandboxes/{sandbox_id}/stop", data={"csrf_token": token},
                       follow_redirects=True).get_data(as_text=True)
    badge, message = _page_says(page)
    assert badge == "stopping"
    assert message.startswith(f"Sandbox {sandbox_id} is stopping (stopped by alice): the "
                              "container engine has not confirmed it yet")
    assert [e.action for e in end_events(core, sandbox_id)] == ["sandbox:sandbox:stop"]
    api = client.post(f"/api/v1/sandboxes/{sandbox_id}/stop", headers=bearer(alice))
    assert api.status_code == 200 and api.get_json()["status"] == "stopping"  # twice: fine
    supervisor_pass(core)  # still down
    fake_backend.engine_up = True
    supervisor_pass(core)
    _assert_stopped_once(core, client, alice, sandbox_id)
    assert fake_backend.sandboxes == {}


def test_the_consoles_start_finishes_a_stop_it_had_recorded(
        client: FlaskClient, core: Sealroom, alice: str, fake_backend: FakeBackend) -> None:
    """The console went down between recording a stop and telling the engine."""
    sandbox_id = _launch(client, alice)
    assert sandbox_service.request_stop(core, ALICE, sandbox_id,
                                        "stopped by alice").status == "stopping"
    sandbox_service.reconcile(core)
    _assert_stopped_once(core, client, alice, sandbox_id)
    assert fake_backend.sandboxes == {}


@pytest.mark.parametrize("ending", ["exit 0", "exit 1", "oom", "vanished", "time limit"])
def test_whatever_ends_a_stopping_sandbox_it_ends_as_the_stop(
        client: FlaskClient, core: Sealroom, alice: str, fake_backend: FakeBackend,
        ending: str) -> None:
    """Once a stop is recorded the sandbox ends `stopped`, whatever the supervisor then sees
    first: its own exit, an OOM kill, its container gone, its time limit."""
    sandbox_id = _launch(client, alice)
    handle = fake_backend.handle_of(sandbox_id)
    sandbox_service.request_stop(core, ALICE, sandbox_id, "stopped by alice")
    if ending == "exit 0":
        fake_backend.finish(handle, exit_code=0)
    elif ending == "exit 1":
        fake_backend.finish(handle, exit_code=1)
    elif ending == "oom":
        fake_backend.finish(handle, oom_killed=True)
    elif ending == "vanished":
        fake_backend.vanish(handle)
    else:
        with core.transaction() as session:  # launched long ago
            row = session.get(Sandbox, sandbox_id)
            assert row is not None
            row.started_at = "2000-01-01T00:00:00+00:00"
            session.add(row)
    supervisor_pass(core)
    _assert_stopped_once(core, client, alice, sandbox_id)


def test_a_sandbox_that_ended_before_the_stop_says_so(
        client: FlaskClient, core: Sealroom, alice: str, fake_backend: FakeBackend) -> None:
    sandbox_id = _launch(client, alice)
    login(client, "alice")
    token = csrf_from(client, f"/sandboxes/{sandbox_id}")
    fake_backend.finish(fake_backend.handle_of(sandbox_id), exit_code=4)
    page = client.post(f"/sandboxes/{sandbox_id}/stop", data={"csrf_token": token},
                       follow_redirects=True).get_data(as_text=True)
    assert _page_says(page) == ("failed", f"Sandbox {sandbox_id} had already ended: failed, "
                                          "exited with code 4.")
    assert [(e.action, e.actor) for e in end_events(core, sandbox_id)] == \
        [("sandbox:sandbox:exit", "system")]


# --- many at once --------------------------------------------------------------------------


def test_20_sandboxes_stopped_at_once_while_the_supervisor_runs_all_end_stopped_once(
        client: FlaskClient, core: Sealroom, alice: str, fake_backend: FakeBackend) -> None:
    change_policy(core, {"resources": {"roles": {"engineer": {"max_concurrent": 20}}}})
    ids = [_launch(client, alice) for _ in range(20)]
    start = threading.Barrier(21)
    answers: dict[str, Any] = {}

    def stop(sandbox_id: str) -> None:
        own = client.application.test_client()
        start.wait(WAIT_S)
        answers[sandbox_id] = own.post(f"/api/v1/sandboxes/{sandbox_id}/stop",
                                       headers=bearer(alice)).get_json()

    threads = [threading.Thread(target=stop, args=(i,)) for i in ids]
    for thread in threads:
        thread.start()
    done = threading.Event()

    def supervise() -> None:  # the console's supervisor, pass after pass
        while not done.is_set():
            supervisor_pass(core)

    watcher = threading.Thread(target=supervise)
    start.wait(WAIT_S)
    watcher.start()
    for thread in threads:
        thread.join(WAIT_S)
    done.set()
    watcher.join(WAIT_S)
    supervisor_pass(core)
    assert {a["status"] for a in answers.values()} == {"stopped"}, answers
    for sandbox_id in ids:
        _assert_stopped_once(core, client, alice, sandbox_id)
    stops = [json.loads(e.details) for e in recorded(core, "sandbox:sandbox:stop")]
    assert len(stops) == 20 and {s["status"] for s in stops} == {"stopped"}


# --- the message, once, on the page that asked ----------------------------------------------


def test_a_pages_polling_never_brings_back_a_message_another_tab_has_shown(
        client: FlaskClient, core: Sealroom, alice: str) -> None:
    """Two tabs: one stops its sandbox and shows the message; the other's poll, sent with
    the cookie as it was in between, must not write that message back for its next page."""
    sandbox_id, other = _launch(client, alice), _launch(client, alice)
    login(client, "alice")
    token = csrf_from(client, f"/sandboxes/{sandbox_id}")
    client.post(f"/sandboxes/{sandbox_id}/stop", data={"csrf_token": token})
    cookie = client.get_cookie("sealroom_session")
    assert cookie is not None
    in_between = cookie.value  # holds the message, not shown yet
    shown = client.get(f"/sandboxes/{sandbox_id}").get_data(as_text=True)
    assert _page_says(shown) == ("stopped", f"Sandbox {sandbox_id} stopped by alice.")
    shown_cookie = client.get_cookie("sealroom_session")
    assert shown_cookie is not None
    client.set_cookie("sealroom_session", in_between)
    for poll in (f"/sandboxes/{other}/live", f"/sandboxes/{other}/metrics"):
        response = client.get(poll)
        assert response.status_code == 200
        assert "Set-Cookie" not in response.headers, poll
    client.set_cookie("sealroom_session", shown_cookie.value)  # what the browser kept
    assert "flash" not in client.get(f"/sandboxes/{other}").get_data(as_text=True)
