"""Helpers shared by tests: the operator caller, logging in through the real form, tokens."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from flask.testing import FlaskClient

from audit.events import Actor
from console.core import Caller

PASSWORD = "correct horse battery"
OPERATOR = Caller(Actor("cli:test", "operator", "cli", "local"))


def write_dataset(directory: Path, rows: int = 200) -> Path:
    from sandbox.examples.demo_dataset import write_demo_dataset

    directory.mkdir(parents=True, exist_ok=True)
    write_demo_dataset(directory, rows=rows)
    return directory


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def login(client: FlaskClient, name: str, password: str = PASSWORD) -> Any:
    """Log in through the real form, CSRF token included."""
    page = client.get("/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page)
    assert token, "login form has no CSRF token"
    return client.post("/login", data={"username": name, "password": password,
                                       "csrf_token": token.group(1)})


def csrf_from(client: FlaskClient, path: str) -> str:
    page = client.get(path).get_data(as_text=True)
    match = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', page)
    assert match, f"no CSRF token on {path}"
    return match.group(1)
