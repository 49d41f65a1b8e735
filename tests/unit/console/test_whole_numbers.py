"""Numbers in paths and query strings that no row can have (past 2**63 - 1, or digits that
are not ASCII) are the caller's mistake: a 4xx with a message, never a 500 from the
database (a trial of the metrics view found `?since=` with 23 digits answered 500)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from flask.testing import FlaskClient
from hypothesis import given
from hypothesis import strategies as st

from console.params import ROW_NUMBER_MAX, whole_number
from tests.helpers import bearer, login
from tests.mocking import FakeBackend, ScriptedOutcome

HUGE = str(ROW_NUMBER_MAX + 1)
NOT_ASCII = "%C2%B2"  # '²': str.isdigit() says yes, int() says no

#: (role, method, path with {n} where a number goes): every API route that reads a number.
API = [
    ("engineer", "GET", "/api/v1/sandboxes/{sb}/metrics?since={n}"),
    ("engineer", "GET", "/api/v1/sandboxes/{sb}/logs?rank={n}"),
    ("engineer", "DELETE", "/api/v1/tokens/{n}"),
    ("engineer", "POST", "/api/v1/tokens/{n}/revoke"),
    ("engineer", "DELETE", "/api/v1/ssh-keys/{n}"),
    ("auditor", "GET", "/api/v1/audit/events/{n}"),
    ("auditor", "GET", "/api/v1/audit/events?before={n}"),
    ("auditor", "GET", "/api/v1/audit/events?after={n}"),
    ("security_officer", "GET", "/api/v1/policy/versions/{n}"),
    ("admin", "GET", "/api/v1/datasets/demo/versions/{n}/lineage"),
]
PAGES = [
    ("engineer", "/sandboxes/{sb}/metrics?since={n}"),
    ("engineer", "/sandboxes/{sb}/live?rank={n}"),
    ("auditor", "/audit?before={n}"),
    ("auditor", "/audit/events/{n}"),
    ("security_officer", "/policy?a={n}&b=1"),
    ("security_officer", "/policy/versions/{n}"),
]


@pytest.fixture
def tokens(make_user: Callable[..., tuple[str, str]], dataset: str) -> dict[str, str]:
    return {role: make_user(f"u-{role}", role)[1]
            for role in ["engineer", "auditor", "security_officer", "admin"]}


@pytest.fixture
def sandbox(client: FlaskClient, tokens: dict[str, str], fake_backend: FakeBackend) -> str:
    fake_backend.default_outcome = ScriptedOutcome(stays_running=True)
    created = client.post("/api/v1/sandboxes", headers=bearer(tokens["engineer"]),
                          json={"dataset": "demo", "example": "mlp"})
    assert created.status_code == 201, created.get_json()
    return str(created.get_json()["id"])


@pytest.mark.parametrize("number", [HUGE, NOT_ASCII], ids=["past-2**63", "not-ascii"])
@pytest.mark.parametrize(("role", "method", "path"), API, ids=[p for _, _, p in API])
def test_the_api_refuses_a_number_no_row_can_have(client: FlaskClient, tokens: dict[str, str],
                                                  sandbox: str, role: str, method: str,
                                                  path: str, number: str) -> None:
    answer = client.open(path.format(sb=sandbox, n=number), method=method,
                         headers=bearer(tokens[role]))
    assert answer.status_code in (400, 404), (answer.status_code, answer.get_data(as_text=True))
    assert answer.get_json()["error"]["message"]


@pytest.mark.parametrize("number", [HUGE, NOT_ASCII], ids=["past-2**63", "not-ascii"])
@pytest.mark.parametrize(("role", "path"), PAGES, ids=[p for _, p in PAGES])
def test_pages_refuse_or_ignore_a_number_no_row_can_have(client: FlaskClient,
                                                         make_user: Callable[..., tuple[str, str]],
                                                         sandbox: str, role: str, path: str,
                                                         number: str) -> None:
    name = {"engineer": "u-engineer"}.get(role) or make_user(f"p-{role}", role)[0]
    login(client, name)
    answer = client.get(path.format(sb=sandbox, n=number))
    assert answer.status_code in (200, 400, 404), (answer.status_code,
                                                   answer.get_data(as_text=True)[:300])


@given(st.text(max_size=24))
def test_a_whole_number_is_ascii_digits_a_row_can_hold(text: str) -> None:
    number = whole_number(text)
    if number is None:
        assert not text.isascii() or not text.isdigit() or int(text) > ROW_NUMBER_MAX
    else:
        assert 0 <= number <= ROW_NUMBER_MAX and int(text) == number


def test_the_largest_row_number_is_a_number() -> None:
    assert whole_number(str(ROW_NUMBER_MAX)) == ROW_NUMBER_MAX
    assert whole_number("0") == 0 and whole_number("") is None and whole_number(None) is None
