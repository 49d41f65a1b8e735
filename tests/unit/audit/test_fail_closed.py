"""Fail closed: with the audit store unwritable, a launch through the API is refused with a
clear 503, no container is left or started, and no sandbox row exists."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

from flask.testing import FlaskClient
from sqlmodel import select

from console.core import Sealroom
from console.models import Sandbox
from tests.helpers import bearer


def test_a_launch_is_refused_when_the_audit_store_is_unwritable(
        client: FlaskClient, core: Sealroom, fake_backend: Any, dataset: str,
        make_user: Callable[..., tuple[str, str]]) -> None:
    _, token = make_user("alice")
    path = core.settings.database_url.removeprefix("sqlite:///")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TRIGGER fail_audit BEFORE INSERT ON audit_event "
                 "BEGIN SELECT RAISE(ABORT, 'audit store unwritable'); END")
    conn.close()

    response = client.post("/api/v1/sandboxes", headers=bearer(token),
                           json={"dataset": dataset, "example": "mlp"})

    assert response.status_code == 503, response.get_data(as_text=True)
    error = response.get_json()["error"]
    assert error["code"] == "audit_unavailable"
    assert "audit log cannot be written" in error["message"]
    # The container is made before the audited transaction; it was never started, and went.
    assert len(fake_backend.created_specs) == 1
    assert fake_backend.sandboxes == {}
    with core.transaction() as session:
        assert session.exec(select(Sandbox)).all() == []
    assert list(core.settings.sandboxes_dir.iterdir()) == []
