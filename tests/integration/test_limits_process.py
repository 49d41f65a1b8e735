"""`sealroom up` as a real process: refusals it counted in a flood (held in memory) are
recorded when it is stopped with SIGTERM, as `docker stop` or systemd stop it."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import requests

from console.core import Sealroom
from console.settings import Settings
from tests.helpers import free_port, recorded, serve_console

pytestmark = pytest.mark.docker  # `up` reconciles with the engine first (a dead one is fine)


def test_counted_refusals_are_recorded_when_the_console_is_stopped(
        settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    core = Sealroom(settings)  # the database exists before the console starts
    monkeypatch.setenv("SEALROOM_REFUSAL_RATE", "5 per minute")
    port = free_port()
    process = serve_console(settings.home, port)
    try:
        statuses = [requests.get(f"http://127.0.0.1:{port}/api/v1/sandboxes",
                                 timeout=30).status_code for _ in range(40)]
        assert statuses.count(429) >= 40 - 2 * 5  # (a minute may turn during the flood)
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            process.kill()
    denials = recorded(core, "auth:request:deny")
    aggregates = [json.loads(e.details) for e in denials
                  if json.loads(e.details).get("suppressed")]
    assert aggregates
    assert len(denials) - len(aggregates) + sum(a["count"] for a in aggregates) == 40
    core.close()
