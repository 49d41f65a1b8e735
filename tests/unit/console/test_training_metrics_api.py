"""Training curves through HTTP with the fake backend.

Which of the two this view is (the product's one rule): the points are sandbox output. Only
finite numbers under names of a fixed charset are kept, each point and each new name spends
the disclosure ledger before anyone sees it (`bytes_per_point`, the name's length), and every
showing and every drop is audited. Progress, counts, drop reasons and refusals are the
console's own words and numbers.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlmodel import select

from console.core import Sealroom
from console.models import DisclosureItem
from sandbox.training_metrics import MARKER
from tests.helpers import bearer, change_policy, login, recorded, supervisor_pass
from tests.mocking import FakeBackend, ScriptedOutcome

SECRET = "P00017 diabetes"


@pytest.fixture
def people(make_user: Callable[..., tuple[str, str]], dataset: str) -> dict[str, str]:
    return {name: make_user(name, role)[1] for name, role in [
        ("alice", "engineer"), ("erin", "engineer")]}


@pytest.fixture
def running(client: FlaskClient, people: dict[str, str], fake_backend: FakeBackend) -> str:
    fake_backend.default_outcome = ScriptedOutcome(stays_running=True)
    created = client.post("/api/v1/sandboxes", headers=bearer(people["alice"]),
                          json={"dataset": "demo", "example": "mlp"})
    assert created.status_code == 201, created.get_json()
    return str(created.get_json()["id"])


def _line(record: Any) -> bytes:
    return MARKER + json.dumps(record).encode() + b"\n"


def _metrics(client: FlaskClient, token: str, sandbox_id: str, since: int = 0) -> Any:
    answer = client.get(f"/api/v1/sandboxes/{sandbox_id}/metrics?since={since}",
                        headers=bearer(token))
    assert answer.status_code == 200, answer.get_json()
    return answer.get_json()


def _paid(core: Sealroom, sandbox_id: str) -> int:
    with core.read() as session:
        return sum(item.bytes for item in session.exec(select(DisclosureItem).where(
            DisclosureItem.sandbox_id == sandbox_id).where(
            DisclosureItem.channel == "metrics")).all())


def test_curves_come_back_paid_for_and_audited(client: FlaskClient, core: Sealroom,
                                               people: dict[str, str], running: str,
                                               fake_backend: FakeBackend) -> None:
    handle = fake_backend.handle_of(running)
    fake_backend.emit(handle, _line({"total_steps": 10}) + b"epoch 1\n" + b"".join(
        _line({"step": s, "values": {"loss": 1.0 / s, "acc": s / 10}}) for s in (1, 2)))
    first = _metrics(client, people["alice"], running)
    assert first["series"] == [
        {"name": "acc", "rank": 0, "points": [[1, 0.1], [2, 0.2]]},
        {"name": "loss", "rank": 0, "points": [[1, 1.0], [2, 0.5]]}]
    assert first["progress"]["step"] == 2 and first["progress"]["total_steps"] == 10
    assert first["progress"]["fraction"] == pytest.approx(0.2)
    # 4 points of 16 bytes, and each name once.
    assert _paid(core, running) == first["spent"] == 4 * 16 + len("acc") + len("loss")
    shown, = recorded(core, "sandbox:metrics:view")
    assert json.loads(shown.details)["points"] == 4
    # Asking again from the cursor: nothing new, nothing spent, nothing audited.
    again = _metrics(client, people["alice"], running, since=first["cursor"])
    assert again["series"] == [] and _paid(core, running) == first["spent"]
    assert len(recorded(core, "sandbox:metrics:view")) == 1
    # New points arrive while it runs; a half-written line waits for its end.
    fake_backend.emit(handle, _line({"step": 3, "values": {"loss": 0.25}}) + MARKER + b'{"st')
    later = _metrics(client, people["alice"], running, since=first["cursor"])
    assert later["series"] == [{"name": "loss", "rank": 0, "points": [[3, 0.25]]}]
    assert later["dropped"] == {}
    fake_backend.emit(handle, b'ep": 4, "values": {"loss": 0.2}}\n')
    assert _metrics(client, people["alice"], running, since=later["cursor"])["series"][0][
        "points"] == [[4, 0.2]]
    # The whole history from 0 is free to show again.
    assert len(_metrics(client, people["alice"], running)["series"][1]["points"]) == 4
    assert _paid(core, running) == 6 * 16 + 7


def test_hostile_metrics_are_dropped_counted_and_never_shown(
        client: FlaskClient, core: Sealroom, people: dict[str, str], running: str,
        fake_backend: FakeBackend) -> None:
    fake_backend.emit(fake_backend.handle_of(running), b"".join([
        _line({"step": 1, "values": {"loss": SECRET}}),
        MARKER + b'{"step": 1, "values": {"loss": NaN}}\n',
        _line({"step": 1, "values": {"n" * 10_240: 1.0}}),
        _line({"step": 1, "values": {SECRET: 1.0}}),
        _line({"step": 1, "values": {"loss": 0.5}, SECRET: 1}),
        _line({"step": 1, "values": {"loss": 0.5}}),
    ]))
    body = _metrics(client, people["alice"], running)
    assert body["series"] == [{"name": "loss", "rank": 0, "points": [[1, 0.5]]}]
    assert body["dropped"] == {"malformed": 2, "name": 1, "value": 2}
    assert _paid(core, running) == 16 + 4
    dropped, = recorded(core, "sandbox:metrics:drop")
    assert dropped.outcome == "denied"
    assert json.loads(dropped.details)["dropped"] == body["dropped"]
    everything = json.dumps(body) + "".join(
        f"{e.reason}{e.details}" for e in recorded(core))
    assert SECRET not in everything and "nnnn" not in everything


def test_a_flood_is_capped_by_rate_and_the_console_stays_responsive(
        client: FlaskClient, core: Sealroom, people: dict[str, str], running: str,
        fake_backend: FakeBackend) -> None:
    line = _line({"step": 1, "values": {"loss": 0.5}})
    fake_backend.emit(fake_backend.handle_of(running), line * 100_000)
    body = _metrics(client, people["alice"], running)
    while body["more"]:  # each answer reads a bounded slice of the log
        assert client.get("/api/v1/sandboxes", headers=bearer(people["alice"])).status_code \
            == 200
        body = _metrics(client, people["alice"], running, since=body["cursor"])
    total = _metrics(client, people["alice"], running)
    assert total["points"] == 600  # points_per_minute, in the first minute
    assert total["dropped"] == {"rate": 100_000 - 600}
    assert _paid(core, running) == 600 * 16 + 4
    drops = recorded(core, "sandbox:metrics:drop")
    assert {json.loads(e.details)["rule"] for e in drops} == {"metrics.points_per_minute"}


def test_caps_budget_and_switch_come_from_the_policy(
        client: FlaskClient, core: Sealroom, people: dict[str, str], running: str,
        fake_backend: FakeBackend) -> None:
    handle = fake_backend.handle_of(running)
    change_policy(core, {"metrics": {"max_series": 2},
                         "disclosure": {"per_sandbox_bytes": 100}})
    fake_backend.emit(handle, b"".join(
        _line({"step": s, "values": {"a": 1.0, "b": 2.0, "c": 3.0}}) for s in range(10)))
    body = _metrics(client, people["alice"], running)
    assert {s["name"] for s in body["series"]} == {"a", "b"}
    # 100 bytes: "a" and "b" (2 bytes of names) and 6 points of 16 bytes.
    assert body["points"] == 6 and _paid(core, running) == 98
    assert body["dropped"] == {"budget": 14, "series": 10}
    assert body["refused"]["rule"] == "disclosure.per_sandbox_bytes"
    change_policy(core, {"metrics": {"enabled": False}})
    fake_backend.emit(handle, _line({"step": 11, "values": {"a": 1.0}}))
    off = _metrics(client, people["alice"], running)
    assert off["refused"] == {"reason": "training metrics are turned off",
                              "rule": "metrics.enabled"}
    assert off["points"] == 6


def test_only_the_owner_reads_curves_and_bad_cursors_are_refused(
        client: FlaskClient, core: Sealroom, people: dict[str, str], running: str) -> None:
    assert client.get(f"/api/v1/sandboxes/{running}/metrics",
                      headers=bearer(people["erin"])).status_code == 404
    assert client.get(f"/api/v1/sandboxes/{running}/metrics").status_code == 401
    bad = client.get(f"/api/v1/sandboxes/{running}/metrics?since=-1",
                     headers=bearer(people["alice"]))
    assert bad.status_code == 400 and "since" in bad.get_json()["error"]["message"]


def test_the_page_polls_the_same_series_with_its_session(
        client: FlaskClient, core: Sealroom, people: dict[str, str], running: str,
        fake_backend: FakeBackend) -> None:
    fake_backend.emit(fake_backend.handle_of(running),
                      _line({"step": 5, "values": {"loss": 0.5}}))
    login(client, "alice")
    page = client.get(f"/sandboxes/{running}")
    assert b'id="metrics"' in page.data
    body = client.get(f"/sandboxes/{running}/metrics?since=0").get_json()
    assert body["series"] == [{"name": "loss", "rank": 0, "points": [[5, 0.5]]}]
    fake_backend.finish(fake_backend.handle_of(running), exit_code=0)
    supervisor_pass(core)
    assert client.get(f"/sandboxes/{running}/metrics?since=0").get_json()["status"] == \
        "succeeded"


def test_the_cli_prints_last_values_csv_and_errors(served: str, core: Sealroom,
                                                   people: dict[str, str], running: str,
                                                   fake_backend: FakeBackend) -> None:
    from click.testing import CliRunner

    from console.cli import main

    def cli(token: str, *args: str) -> Any:
        return CliRunner().invoke(main, ["sandbox", "metrics", *args],
                                  env={"SEALROOM_URL": served, "SEALROOM_TOKEN": token})

    assert "no training metrics yet" in cli(people["alice"], running).output
    fake_backend.emit(fake_backend.handle_of(running), _line({"total_steps": 4}) + b"".join(
        _line({"step": s, "values": {"loss": 1.0 / s}}) for s in (1, 2)) + _line(
        {"step": 3, "values": {"loss": SECRET}}))
    table = cli(people["alice"], running)
    assert table.exit_code == 0, table.output
    assert "loss" in table.output and "2 points" in table.output and "last 0.5" in table.output
    assert "progress: step 2 of 4" in table.output and "dropped: 1 (value)" in table.output
    csv = cli(people["alice"], running, "--csv")
    assert csv.output.splitlines() == ["name,rank,step,value", "loss,0,1,1.0", "loss,0,2,0.5"]
    other = cli(people["erin"], running)
    assert other.exit_code != 0 and "no such sandbox" in other.output
