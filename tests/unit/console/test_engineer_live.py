"""The engineer's sandbox page and launch form, on the fake backend: the live log reaches the
tail and follows it without paying twice, the running figures (time, CPU, memory), a plain
or a shell command, and a refused launch that keeps its values and its upload."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask.testing import FlaskClient

from console.core import Sealroom
from console.services import held_uploads, sandbox_usage
from console.services.sandbox_log import BLOCK
from console.web.engineer import LIVE_LOG_MAX, whole_characters
from tests.helpers import bearer, csrf_from, login, recorded
from tests.mocking import FakeBackend

LOGS_VIEW = "sandbox:logs:view"


def _launch(client: FlaskClient, **fields: Any) -> Any:
    data = {"csrf_token": csrf_from(client, "/sandboxes/new"), "dataset": "demo",
            "source": "example", "example": "mlp", "command": "python train.py",
            "command_kind": "program", "cpus": "1", "memory_mb": "1024", "pids": "128",
            "timeout_s": "600"}
    data.update(fields)
    return client.post("/sandboxes/new", data=data, content_type="multipart/form-data")


def _launched(client: FlaskClient, **fields: Any) -> str:
    response = _launch(client, **fields)
    assert response.status_code == 302, response.get_data(as_text=True)
    return str(response.headers["Location"]).rsplit("/", 1)[-1]


def _spent(core: Sealroom) -> int:
    return sum(int(e.details.get("spent", 0) if isinstance(e.details, dict)
                   else json.loads(e.details or "{}").get("spent", 0))
               for e in recorded(core, LOGS_VIEW))


def test_the_live_log_opens_on_the_tail_and_follows_it_paying_each_block_once(
        client: FlaskClient, alice: str, core: Sealroom, fake_backend: FakeBackend) -> None:
    """Log bytes are the sandbox's: every showing spends the disclosure budget and is
    audited, and following the tail (asking from where the last answer ended) never pays
    twice for a block."""
    login(client, "alice")
    sandbox_id = _launched(client)
    handle = fake_backend.handle_of(sandbox_id)
    lines = b"".join(b"step %05d loss 0.5\n" % n for n in range(20_000))  # 400,000 bytes
    fake_backend.emit(handle, lines)
    live = f"/sandboxes/{sandbox_id}/live"

    first = client.get(f"{live}?offset={-LIVE_LOG_MAX}").get_json()
    total = first["total"]
    assert first["offset"] == total and first["start"] == total - LIVE_LOG_MAX
    assert first["log"].endswith("step 19999 loss 0.5\n") and not first["more"]
    spent_on_tail = _spent(core)
    assert spent_on_tail >= LIVE_LOG_MAX

    # The job prints on; the page asks from where it stopped and gets just the new lines.
    fake_backend.emit(handle, b"step 20000 loss 0.4\n")
    second = client.get(f"{live}?offset={first['offset']}").get_json()
    assert second["log"] == "step 20000 loss 0.4\n" and second["offset"] == total + 20
    # Asking again from the end shows nothing new and charges nothing.
    again = client.get(f"{live}?offset={second['offset']}").get_json()
    assert again["log"] == ""
    # The new line shares its first block with the tail's last one: charged once only.
    assert _spent(core) - spent_on_tail <= 2 * BLOCK
    views = recorded(core, LOGS_VIEW)
    assert len(views) == 2 and all(v.outcome == "ok" for v in views)


def test_a_page_behind_the_log_catches_up_at_once(
        client: FlaskClient, alice: str, fake_backend: FakeBackend) -> None:
    """From the start, a long log comes in full windows marked `more` until the end."""
    login(client, "alice")
    sandbox_id = _launched(client)
    fake_backend.emit(fake_backend.handle_of(sandbox_id), b"x" * 99 + b"\n" * 1
                      + b"".join(b"line %06d\n" % n for n in range(50_000)))
    offset, answers, text = 0, [], []
    while True:
        body = client.get(f"/sandboxes/{sandbox_id}/live?offset={offset}").get_json()
        answers.append(body)
        text.append(body["log"])
        offset = body["offset"]
        if not body["more"]:
            break
    assert len(answers) == 3 and all(a["more"] for a in answers[:-1])
    assert "".join(text).endswith("line 049999\n") and offset == answers[-1]["total"]


def test_a_character_cut_by_the_window_waits_for_the_next_answer() -> None:
    euro = "€".encode()
    assert whole_characters(b"abc" + euro) == b"abc" + euro
    assert whole_characters(b"abc" + euro[:2]) == b"abc"
    assert whole_characters(b"abc" + euro[:1]) == b"abc"
    assert whole_characters(b"abc") == b"abc"


def test_running_figures_are_the_consoles_own_coarse_and_sampled_rarely(
        client: FlaskClient, alice: str, core: Sealroom, fake_backend: FakeBackend) -> None:
    """Elapsed and remaining time and CPU and memory use are console-composed: the console's
    own record and the engine's counters (cgroup CPU time and memory), never bytes the sandbox
    wrote, so showing them spends no budget and audits no log view. A sandbox can steer its
    own use, so the figures are in steps of 5 % of the limits and read at most every 5 s."""
    login(client, "alice")
    sandbox_id = _launched(client, cpus="2", memory_mb="1000")
    handle = fake_backend.handle_of(sandbox_id)
    from console.models import Sandbox

    with core.transaction() as session:
        record = session.get(Sandbox, sandbox_id)
        assert record is not None and record.started_at
    started = datetime.fromisoformat(record.started_at)
    fake_backend.use(handle, cpu_ns=int(60e9), memory_bytes=333 << 20)
    # The first reading: CPU averaged since the start (60 s of CPU over 60 s: one CPU).
    first = sandbox_usage.figures(core, record, now=started + timedelta(seconds=60))
    assert first["elapsed_s"] == 60.0 and first["remaining_s"] == 540.0
    assert first["time_limit_s"] == 600 and first["cpus_limit"] == 2
    assert first["memory_mb_used"] == 350 and first["memory_mb_limit"] == 1000  # 333 → 350
    assert first["cpus_used"] is not None
    # Within SAMPLE_S the engine is not asked again: the same figures.
    fake_backend.use(handle, cpu_ns=int(1000e9), memory_bytes=900 << 20)
    assert sandbox_usage.figures(core, record, now=started + timedelta(seconds=62)) \
        | {"elapsed_s": 60.0, "remaining_s": 540.0} == first
    later = sandbox_usage.figures(core, record, now=started + timedelta(seconds=70))
    assert later["memory_mb_used"] == 900 and later["cpus_used"] == 2.0  # capped at the limit

    page = client.get(f"/sandboxes/{sandbox_id}").get_data(as_text=True)
    assert 'id="cpu-use"' in page and 'id="memory-use"' in page and 'id="remaining"' in page
    live = client.get(f"/sandboxes/{sandbox_id}/live?log=0").get_json()
    assert live["usage"]["memory_mb_limit"] == 1000
    assert recorded(core, LOGS_VIEW) == []

    fake_backend.finish(handle, exit_code=0)
    with core.transaction() as session:
        record = session.get(Sandbox, sandbox_id)
        assert record is not None
    record.status, record.finished_at = "succeeded", (started + timedelta(seconds=80)).isoformat()
    ended = sandbox_usage.figures(core, record, now=datetime.now(UTC))
    assert ended["elapsed_s"] == 80.0 and ended["remaining_s"] is None
    assert ended["cpus_used"] is None and ended["memory_mb_used"] is None


def test_the_api_sandbox_has_its_usage(client: FlaskClient, alice: str,
                                       fake_backend: FakeBackend) -> None:
    created = client.post("/api/v1/sandboxes", headers=bearer(alice),
                          json={"dataset": "demo", "example": "mlp"})
    assert created.status_code == 201
    fake_backend.use(fake_backend.handle_of(created.get_json()["id"]), cpu_ns=0,
                     memory_bytes=100 << 20)
    body = client.get(f"/api/v1/sandboxes/{created.get_json()['id']}",
                      headers=bearer(alice)).get_json()
    assert set(body["usage"]) >= {"elapsed_s", "remaining_s", "time_limit_s", "cpus_used",
                                  "cpus_limit", "memory_mb_used", "memory_mb_limit"}


def test_a_shell_command_runs_under_sh_and_a_plain_one_that_needs_it_is_refused(
        client: FlaskClient, alice: str, core: Sealroom, fake_backend: FakeBackend) -> None:
    login(client, "alice")
    _launched(client, command="cd src && python main.py", command_kind="shell")
    assert fake_backend.created_specs[-1].command == ("/bin/sh", "-c", "cd src && python main.py")

    refused = _launch(client, command="cd src && python main.py", command_kind="program")
    assert refused.status_code == 400
    assert "needs a shell" in refused.get_data(as_text=True)
    assert recorded(core, "sandbox:sandbox:launch")[-1].outcome == "denied"
    assert len(fake_backend.created_specs) == 1

    created = client.post("/api/v1/sandboxes", headers=bearer(alice), json={
        "dataset": "demo", "example": "mlp", "command": "echo $SEALROOM_SANDBOX | wc -c",
        "shell": True})
    assert created.status_code == 201
    assert created.get_json()["command"] == "/bin/sh -c 'echo $SEALROOM_SANDBOX | wc -c'"
    bad = client.post("/api/v1/sandboxes", headers=bearer(alice),
                      json={"dataset": "demo", "example": "mlp", "shell": "yes"})
    assert bad.status_code == 400 and "shell must be" in bad.get_json()["error"]["message"]


def test_a_refused_launch_keeps_its_values_and_its_upload_for_one_try(
        client: FlaskClient, alice: str, core: Sealroom, fake_backend: FakeBackend) -> None:
    import io

    login(client, "alice")
    code = b"print('hello')\n"
    refused = _launch(client, source="upload", cpus="32", command="python hello.py",
                      command_kind="shell", code=(io.BytesIO(code), "hello.py"))
    assert refused.status_code == 403
    page = refused.get_data(as_text=True)
    assert 'id="kept-upload"' in page and "hello.py" in page
    assert re.search(r'value="32(\.00)?"', page) and 'value="python hello.py"' in page
    assert re.search(r'checked[^>]*value="shell"|value="shell"[^>]*checked', page)
    held = list((core.settings.home / "held-uploads").iterdir())
    assert len(held) == 1 and held[0].read_bytes() == code

    # The next try, with no file chosen, launches the kept upload; nothing is left behind.
    launched = _launch(client, source="upload", command="python hello.py")
    assert launched.status_code == 302, launched.get_data(as_text=True)
    assert list((core.settings.home / "held-uploads").iterdir()) == []
    assert fake_backend.created_specs[-1].command == ("python", "hello.py")
    sandbox_id = str(launched.headers["Location"]).rsplit("/", 1)[-1]
    assert "hello.py" in client.get(f"/sandboxes/{sandbox_id}").get_data(as_text=True)
    # Taken once: a third try has no upload to fall back on.
    again = _launch(client, source="upload")
    assert again.status_code == 400 and "Choose a script" in again.get_data(as_text=True)


def test_a_kept_upload_expires(core: Sealroom, monkeypatch: pytest.MonkeyPatch) -> None:
    token = held_uploads.hold(core, b"data")
    assert held_uploads.exists(core, token)
    monkeypatch.setattr(held_uploads, "HOLD_S", -1)
    assert not held_uploads.exists(core, token)
    assert held_uploads.take(core, token) is None
    assert held_uploads.take(core, "../../etc/passwd") is None


def test_the_cli_launches_a_shell_command(served: str, alice: str,
                                          fake_backend: FakeBackend) -> None:
    from click.testing import CliRunner

    from console.cli import main

    result = CliRunner().invoke(main, [
        "sandbox", "launch", "--dataset", "demo", "--example", "mlp", "--shell",
        "--command", "cd /workspace && python train.py", "--url", served, "--token", alice])
    assert result.exit_code == 0, result.output
    assert fake_backend.created_specs[-1].command == (
        "/bin/sh", "-c", "cd /workspace && python train.py")
