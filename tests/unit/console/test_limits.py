"""Limits that hold: login attempts counted before the password is checked (32 at once
through a real waitress server), a flood of refused requests bounded in the audit log and
still counted to the last request, and the client address taken from X-Forwarded-For only
when a trusted proxy sent it."""

from __future__ import annotations

import dataclasses
import json
import re
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient

from audit.errors import AuditWriteFailed
from audit.events import Actor
from console.app import create_app
from console.core import Sealroom
from console.guards import client_address
from console.services.flood import LoginThrottle, RefusalLedger, record_counted
from console.settings import Rate, Settings, SettingsError, parse_rate
from tests.helpers import PASSWORD, login, recorded

WRONG = "not the password at all"


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _app(core: Sealroom, **settings: Any) -> Flask:
    core.settings = dataclasses.replace(core.settings, **settings)
    return create_app(sealroom=core)


@pytest.fixture
def alice(make_user: Callable[..., tuple[str, str]]) -> str:
    return make_user("alice")[1]


# --- the settings ---------------------------------------------------------------------


@pytest.mark.parametrize("text, rate", [
    ("10 per minute", Rate(10, 60)), ("10/minute", Rate(10, 60)),
    ("3 per 5 minutes", Rate(3, 300)), ("1 per second", Rate(1, 1)),
    ("100 per day", Rate(100, 86400))])
def test_rates_are_read_as_flask_limiter_writes_them(text: str, rate: Rate) -> None:
    assert parse_rate(text) == rate


@pytest.mark.parametrize("overrides, variable", [
    ({"login_rate": "lots"}, "SEALROOM_LOGIN_RATE"),
    ({"refusal_rate": "0 per minute"}, "SEALROOM_REFUSAL_RATE"),
    ({"trusted_proxies": ("10.0.0.0/8", "proxy.example")}, "SEALROOM_TRUSTED_PROXIES"),
])
def test_a_bad_limit_setting_stops_the_console_naming_the_variable(
        settings: Settings, overrides: dict[str, Any], variable: str) -> None:
    with pytest.raises(SettingsError, match=variable):
        dataclasses.replace(settings, **overrides)


# --- login attempts ---------------------------------------------------------------------


def _throttle(clock: Clock, pair: int = 3, address: int = 5, user: int = 6) -> LoginThrottle:
    return LoginThrottle(Rate(pair, 60), Rate(address, 60), Rate(user, 60), clock=clock)


def test_an_attempt_counts_before_its_password_is_checked_and_a_success_gives_it_back() -> None:
    clock = Clock()
    throttle = _throttle(clock)
    first = throttle.admit("alice", "10.0.0.1")
    throttle.succeeded(first)  # a right password costs nothing
    assert [bool(throttle.admit("alice", "10.0.0.1")) for _ in range(4)] == \
        [True, True, True, False]
    refused = throttle.admit("Alice ", "10.0.0.1")  # the same account, however written
    assert (refused.allowed, refused.refused_by) == (False, "user and address")
    assert refused.retry_after_s == 60
    clock.now += 60  # the window slides: the oldest attempts leave it
    assert throttle.admit("alice", "10.0.0.1")


def test_one_address_cannot_try_many_accounts_past_its_own_limit() -> None:
    throttle = _throttle(Clock())
    admitted = [bool(throttle.admit(f"user{n}", "10.0.0.1")) for n in range(8)]
    assert admitted == [True] * 5 + [False] * 3
    assert throttle.admit("user9", "10.0.0.1").refused_by == "address"


def test_the_per_user_limit_needs_many_addresses_and_spares_where_the_user_works_from() -> None:
    throttle = _throttle(Clock())
    throttle.succeeded(throttle.admit("alice", "10.0.0.7"))  # alice's usual address
    # One address alone can never exhaust alice's allowance: its own window stops it first.
    assert sum(bool(throttle.admit("alice", "10.0.0.1")) for _ in range(10)) == 3
    assert throttle.admit("alice", "10.0.0.2") and throttle.admit("alice", "10.0.0.2")
    assert throttle.admit("alice", "10.0.0.3")
    # Refused attempts cost nothing: six admitted from three addresses fill the window.
    assert throttle.admit("alice", "10.0.0.4").refused_by == "user"
    # Where alice last logged in from, she still may (her own windows still apply).
    assert throttle.admit("alice", "10.0.0.7")


def test_32_attempts_at_once_never_get_more_than_the_limit_through_the_throttle() -> None:
    throttle = _throttle(Clock(), pair=3, address=100, user=100)
    start = threading.Barrier(32)

    def attempt(_: int) -> bool:
        start.wait()
        return bool(throttle.admit("alice", "10.0.0.1"))

    with ThreadPoolExecutor(32) as pool:
        assert sum(pool.map(attempt, range(32))) == 3


@pytest.fixture
def served(core: Sealroom, alice: str) -> Iterator[str]:
    """The console on waitress (threads, as `sealroom up` serves it) with a login limit of
    5 per minute."""
    from waitress.server import create_server

    app = _app(core, login_rate="5 per minute")
    server = create_server(app, host="127.0.0.1", port=0, threads=8)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.effective_port}"
    server.close()


def test_32_concurrent_wrong_passwords_get_at_most_the_limit_through(
        served: str, core: Sealroom) -> None:
    browsers = [requests.Session() for _ in range(32)]
    tokens = []
    for browser in browsers:
        page = browser.get(f"{served}/login", timeout=30).text
        match = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page)
        assert match
        tokens.append(match.group(1))
    start = threading.Barrier(32)

    def attempt(n: int) -> int:
        start.wait()
        return browsers[n].post(f"{served}/login", timeout=60, data={
            "username": "alice", "password": WRONG, "csrf_token": tokens[n]}).status_code

    with ThreadPoolExecutor(32) as pool:
        statuses = list(pool.map(attempt, range(32)))
    assert statuses.count(401) <= 5
    assert statuses.count(401) + statuses.count(429) == 32
    checked = [e for e in recorded(core, "auth:session:login")
               if e.reason == "wrong user name or password"]
    assert len(checked) == statuses.count(401)
    limited = [e for e in recorded(core, "auth:session:login")
               if e.reason == "too many attempts (rate limited)"]
    assert len(limited) == statuses.count(429)
    assert {json.loads(e.details)["limit"] for e in limited} == {"user and address"}
    # Alice herself, from the same address, waits like the guesser.
    page = browsers[0].get(f"{served}/login", timeout=30).text
    match = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page)
    assert match
    answer = browsers[0].post(f"{served}/login", timeout=30, data={
        "username": "alice", "password": PASSWORD, "csrf_token": match.group(1)})
    assert answer.status_code == 429
    assert 1 <= int(answer.headers["Retry-After"]) <= 60


def test_logins_from_behind_a_trusted_proxy_are_limited_per_client(
        core: Sealroom, alice: str) -> None:
    app = _app(core, login_rate="2 per minute", trusted_proxies=("192.0.2.1",))

    def browser(client_ip: str) -> FlaskClient:
        client = app.test_client()
        client.environ_base.update({"REMOTE_ADDR": "192.0.2.1",
                                    "HTTP_X_FORWARDED_FOR": client_ip})
        return client

    guesser = browser("203.0.113.66")
    assert [login(guesser, "alice", WRONG).status_code for _ in range(3)] == [401, 401, 429]
    # Everyone else behind the same proxy is not locked out by the guesser.
    assert login(browser("198.51.100.7"), "alice").status_code == 302
    sources = {e.source for e in recorded(core, "auth:session:login")}
    assert sources == {"203.0.113.66", "198.51.100.7"}


# --- the client address ---------------------------------------------------------------------


PROXY = ("10.0.0.5", "10.1.0.0/16")


@pytest.mark.parametrize("peer, forwarded, trusted, expected", [
    # Nobody trusted (the default): the header is the client's to write, so it is ignored.
    ("203.0.113.9", ["1.2.3.4"], (), "203.0.113.9"),
    ("10.0.0.5", ["1.2.3.4"], (), "10.0.0.5"),
    # A peer that is not a trusted proxy: its header is ignored.
    ("203.0.113.9", ["1.2.3.4"], PROXY, "203.0.113.9"),
    # A trusted proxy: the rightmost address it did not itself trust is the client...
    ("10.0.0.5", ["198.51.100.7"], PROXY, "198.51.100.7"),
    # ...whatever the client wrote before it (the proxy appends the address it saw).
    ("10.0.0.5", ["6.6.6.6, 198.51.100.7"], PROXY, "198.51.100.7"),
    # Several trusted hops (and several header lines) are walked through.
    ("10.0.0.5", ["6.6.6.6, 198.51.100.7", "10.1.2.3"], PROXY, "198.51.100.7"),
    # A hop that is not an address was not written by a trusted proxy: stop before it.
    ("10.0.0.5", ["198.51.100.7, garbage, 10.1.2.3"], PROXY, "10.1.2.3"),
    # No header, or only trusted hops: the furthest trusted address.
    ("10.0.0.5", [], PROXY, "10.0.0.5"),
    ("10.0.0.5", ["10.1.9.9"], PROXY, "10.1.9.9"),
    # IPv6, and IPv4 written as IPv6.
    ("::ffff:10.0.0.5", ["2001:db8::1"], PROXY, "2001:db8::1"),
    ("2001:db8:ffff::1", [" 2001:db8::7 "], ("2001:db8:ffff::/48",), "2001:db8::7"),
])
def test_x_forwarded_for_is_believed_only_from_a_trusted_proxy(
        peer: str, forwarded: list[str], trusted: tuple[str, ...], expected: str) -> None:
    assert client_address(peer, forwarded, trusted) == expected


def test_the_audit_source_is_the_client_behind_a_trusted_proxy_and_the_peer_otherwise(
        core: Sealroom) -> None:
    trusting = _app(core, trusted_proxies=("192.0.2.0/24",)).test_client()
    headers = {"X-Forwarded-For": "6.6.6.6, 198.51.100.7"}
    trusting.get("/api/v1/sandboxes", headers=headers,
                 environ_base={"REMOTE_ADDR": "192.0.2.10"})
    trusting.get("/api/v1/sandboxes", headers=headers,
                 environ_base={"REMOTE_ADDR": "203.0.113.9"})
    sources = [e.source for e in recorded(core, "auth:request:deny")]
    assert sources == ["198.51.100.7", "203.0.113.9"]


# --- refused requests ---------------------------------------------------------------------


def _counts(core: Sealroom) -> tuple[int, int, list[Any]]:
    """(refusals recorded one by one, refusals counted in aggregates, the aggregates)."""
    denials = recorded(core, "auth:request:deny")
    aggregates = [e for e in denials if json.loads(e.details).get("suppressed")]
    return (len(denials) - len(aggregates),
            sum(json.loads(e.details)["count"] for e in aggregates), aggregates)


def test_a_flood_of_2000_refused_requests_is_bounded_in_the_log_and_every_one_counted(
        core: Sealroom) -> None:
    import time

    app = _app(core, refusal_rate="20 per minute")
    client = app.test_client()
    before = len(recorded(core))
    first_period = int(time.time() // 60)
    statuses = []
    for n in range(2000):
        kind = n % 3
        if kind == 0:
            response = client.get("/api/v1/sandboxes")
        elif kind == 1:
            response = client.get("/sandboxes")
        else:
            response = client.post("/login", data={"username": "x", "password": "y"})
        statuses.append(response.status_code)
    periods = int(time.time() // 60) - first_period + 1
    limited = client.get("/api/v1/sandboxes")  # one more, to see the answer
    assert limited.status_code == 429
    assert limited.get_json()["error"]["code"] == "rate_limited"
    assert int(limited.headers["Retry-After"]) <= 60
    assert "429" in client.get("/sandboxes").get_data(as_text=True)  # a page for browsers
    core.close()  # shutdown records what is still counted

    one_by_one, counted, aggregates = _counts(core)
    assert one_by_one + counted == 2002
    assert one_by_one <= 20 * periods
    assert len(aggregates) <= periods
    assert statuses.count(429) >= 2000 - 20 * periods
    # Nothing else was written for the flood: no per-request record of any kind.
    assert len(recorded(core)) - before == one_by_one + len(aggregates)
    details = json.loads(aggregates[-1].details)
    assert aggregates[-1].source == "127.0.0.1" and aggregates[-1].actor == "anonymous"
    assert aggregates[-1].target == "source:127.0.0.1"
    assert set(details["actions"]) == {"auth:request:deny"}
    assert set(details["targets"]) <= {"GET /api/v1/sandboxes", "GET /sandboxes", "/login"}
    assert set(details["reasons"]) <= {"not logged in", "missing or invalid API token",
                                       "CSRF: The CSRF token is missing."}


def test_refusals_over_the_budget_of_one_source_leave_others_alone(core: Sealroom,
                                                                    alice: str) -> None:
    app = _app(core, refusal_rate="3 per minute")
    flooder = app.test_client()
    flooder.environ_base["REMOTE_ADDR"] = "203.0.113.66"
    assert [flooder.get("/api/v1/sandboxes").status_code for _ in range(5)] == \
        [401, 401, 401, 429, 429]
    other = app.test_client()
    other.environ_base["REMOTE_ADDR"] = "198.51.100.7"
    assert other.get("/api/v1/sandboxes").status_code == 401
    # A logged-in user at the flooding address is served; only refusals are limited.
    flooder.environ_base["REMOTE_ADDR"] = "203.0.113.66"
    assert flooder.get("/api/v1/sandboxes",
                       headers={"Authorization": f"Bearer {alice}"}).status_code == 200
    assert login(flooder, "alice").status_code == 302
    assert flooder.get("/sandboxes").status_code == 200


def test_counts_of_a_period_are_recorded_once_it_is_over_even_if_nothing_else_arrives(
        core: Sealroom) -> None:
    clock = Clock(60 * 1000 + 5)
    ledger = RefusalLedger(Rate(2, 60), clock=clock)
    flooder = Actor.anonymous("203.0.113.66")
    outcomes = [ledger.refuse(flooder, "auth:request:deny", "GET /x", "not logged in")
                for _ in range(7)]
    assert outcomes == [True, True] + [False] * 5
    assert record_counted(core, ledger) == 0  # the period is not over
    clock.now += 60  # what the supervisor's next pass sees
    assert record_counted(core, ledger) == 1
    (event,) = recorded(core, "auth:request:deny")
    details = json.loads(event.details)
    assert (details["count"], details["targets"]) == (5, {"GET /x": 5})
    assert details["period"] == {"from": "1970-01-01T16:40:00Z", "to": "1970-01-01T16:41:00Z"}
    assert record_counted(core, ledger) == 0  # recorded once
    # The new period starts with a fresh budget.
    assert ledger.refuse(flooder, "auth:request:deny", "GET /x", "not logged in")


def test_counts_that_cannot_be_written_are_kept_for_the_next_try(core: Sealroom) -> None:
    clock = Clock(60 * 1000)
    ledger = RefusalLedger(Rate(1, 60), clock=clock)
    for source in ("203.0.113.1", "203.0.113.2"):
        for _ in range(4):
            ledger.refuse(Actor.anonymous(source), "auth:request:deny", "GET /x", "no")

    class AuditDown:
        def record(self, *args: Any, **kwargs: Any) -> None:
            raise AuditWriteFailed("disk full")

    assert record_counted(AuditDown(), ledger, everything=True) == 0  # type: ignore[arg-type]
    for _ in range(2):  # more from the first source in the same period
        ledger.refuse(Actor.anonymous("203.0.113.1"), "auth:request:deny", "GET /y", "no")
    assert record_counted(core, ledger, everything=True) == 2
    counts = {e.source: json.loads(e.details)["count"]
              for e in recorded(core, "auth:request:deny")}
    assert counts == {"203.0.113.1": 5, "203.0.113.2": 3}


def test_a_flood_of_many_targets_makes_a_small_event() -> None:
    ledger = RefusalLedger(Rate(1, 60), clock=Clock())
    for n in range(500):
        ledger.refuse(Actor.anonymous("203.0.113.1"), "auth:request:deny", f"GET /{n}", "no")
    (count,) = ledger.due(everything=True)
    assert count.count == 499
    assert len(count.targets) == 11 and count.targets["(other)"] == 489
