"""The platform as Prometheus sees it: sandboxes, launches, releases, the audit chain, the
disclosure ledger, SSH sessions, logins and the engine, read from the database at scrape
time so every console (and gateway) process reports the same truth across restarts.

Counters come from the append-only audit chain, tallied incrementally (each scrape reads
only the events after the last one it counted). Label values are ids or fixed vocabularies
(rule ids, check names, outcomes), never free text. The SQL is SQLite's (the product's
database): `julianday` for durations, as the stored times are ISO 8601.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from importlib import metadata
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from sqlalchemy import Connection, bindparam, text

from audit.events import AuditAction, Outcome
from console.core import Sealroom
from console.models import ReleaseStatus, SandboxStatus
from console.services.disclosure import today
from sandbox.gate.checks import Check

#: Launch duration buckets (seconds): from a warm single container to a cold MPI cluster.
LAUNCH_BUCKETS = (0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
#: Request-to-decision buckets (seconds): minutes to a working week.
DECISION_BUCKETS = (60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 86400.0, 3 * 86400.0,
                    7 * 86400.0)
#: How long one answer about the engine stands: scrapes never queue behind a slow engine.
ENGINE_PROBE_TTL_S = 15.0
#: Events tallied per query: a first scrape of a long chain reads it in pages.
TALLY_PAGE = 50_000
KINDS = ("single", "mpi")
#: Launch failures' classes always exported (at 0), so an alert's `increase()` sees the
#: first one: the codes of the service errors a launch fails with, and records without one.
FAILURE_CLASSES = ("engine_unavailable", "audit_unavailable", "unclassified")

#: A label value taken from a record must look like an id (a rule, a check, an error code).
_ID = re.compile(r"^[a-z][a-z0-9_.:-]{0,63}$")
_DETAILED = (AuditAction.SANDBOX_LAUNCH, AuditAction.LOGIN, AuditAction.RELEASE_CHECKS,
             AuditAction.SSH_END, AuditAction.REQUEST_DENIED)
_CHECKS = frozenset(c.value for c in Check)


def bounded(value: object, *, empty: str = "none") -> str:
    """`value` as a label value if it is an id, `empty` if absent, else `other`."""
    if value in (None, ""):
        return empty
    return str(value) if _ID.match(str(value)) else "other"


class AuditTally:
    """Counts over the audit chain up to the last event seen; each `advance` adds only the
    events written since. Rows are only ever inserted, in id order (writers are
    serialised), so the counts never need recounting."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.last_id = 0
        self.events: Counter[tuple[str, str]] = Counter()
        self.launch_refusals: Counter[str] = Counter()  # by rule
        self.launch_failures: Counter[str] = Counter()  # by error class
        self.login_failures: Counter[str] = Counter()  # "credentials" or "rate_limited"
        self.check_failures: Counter[str] = Counter()  # by gate check
        self.ssh_ended: Counter[tuple[str, str]] = Counter()  # by outcome and rule

    def advance(self, conn: Connection, head: int) -> AuditTally:
        """Count the events up to `head`; a copy of the counts, for one scrape to read while
        others advance."""
        with self._lock:
            while self.last_id < head:
                upto = min(head, self.last_id + TALLY_PAGE)
                self._count(conn, self.last_id, upto)
                self.last_id = upto
            return self._copy()

    def _copy(self) -> AuditTally:
        copy = AuditTally()
        copy.last_id = self.last_id
        for name in ("events", "launch_refusals", "launch_failures", "login_failures",
                     "check_failures", "ssh_ended"):
            setattr(copy, name, Counter(getattr(self, name)))
        return copy

    def _count(self, conn: Connection, above: int, upto: int) -> None:
        span = {"above": above, "upto": upto}
        for action, outcome, count in conn.execute(text(
                "SELECT action, outcome, count(*) FROM audit_event "
                "WHERE id > :above AND id <= :upto GROUP BY action, outcome"), span):
            self.events[(action, outcome)] += count
        # Denied requests are many: only the counted floods' details are read.
        rows = conn.execute(text(
            "SELECT action, outcome, details FROM audit_event WHERE id > :above "
            "AND id <= :upto AND action IN :detailed AND (outcome != 'ok' OR action IN "
            ":always) AND (action != :denied OR details LIKE :suppressed)"
        ).bindparams(bindparam("detailed", expanding=True),
                     bindparam("always", expanding=True)),
            {**span, "detailed": [a.value for a in _DETAILED],
             "always": [AuditAction.RELEASE_CHECKS.value, AuditAction.SSH_END.value],
             "denied": AuditAction.REQUEST_DENIED.value,
             "suppressed": '%"suppressed":true%'})
        for action, outcome, raw in rows:
            self._detail(action, outcome, json.loads(raw or "{}"))

    def _detail(self, action: str, outcome: str, details: dict[str, Any]) -> None:
        if action == AuditAction.SANDBOX_LAUNCH:
            if outcome == Outcome.DENIED:
                self.launch_refusals[bounded(details.get("rule"))] += 1
            else:
                self.launch_failures[bounded(details.get("error"), empty="unclassified")] += 1
        elif action == AuditAction.LOGIN:
            self.login_failures["rate_limited" if "limit" in details else "credentials"] += 1
        elif action == AuditAction.REQUEST_DENIED:
            counted = (details.get("actions") or {}).get(AuditAction.LOGIN.value, 0)
            if isinstance(counted, int) and counted > 0:
                self.login_failures["rate_limited"] += counted
        elif action == AuditAction.RELEASE_CHECKS:
            failed = {str(r.get("check")) for r in details.get("results", ())
                      if isinstance(r, dict) and not r.get("passed")}
            for check in failed:
                self.check_failures[check if check in _CHECKS else "other"] += 1
        elif action == AuditAction.SSH_END:
            self.ssh_ended[(bounded(outcome), bounded(details.get("rule")))] += 1


@dataclass
class EngineProbe:
    """Whether the container engine answers, asked at most once per `ttl_s` and never by
    two scrapes at once (the other reports the last answer). The backend's ping has its own
    short connect timeout."""

    sealroom: Sealroom
    ttl_s: float = ENGINE_PROBE_TTL_S
    up: bool = True
    asked_at: float = float("-inf")

    def __post_init__(self) -> None:
        self._asking = threading.Lock()

    def answer(self) -> bool:
        if self.sealroom.engine_watch.down_since is not None:
            return False  # the supervisor saw it stop and has not seen it back
        if time.monotonic() - self.asked_at < self.ttl_s or \
                not self._asking.acquire(blocking=False):
            return self.up
        try:
            try:
                self.sealroom.backend.ping()
                self.up = True
            except Exception:  # noqa: BLE001  (not answering, or no backend to build: down)
                self.up = False
            self.asked_at = time.monotonic()
        finally:
            self._asking.release()
        return self.up


def _seconds(iso: str | None) -> float:
    if not iso:
        return 0.0
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _histogram(conn: Connection, durations_sql: str, buckets: tuple[float, ...],
               name: str, documentation: str) -> HistogramMetricFamily:
    """A histogram over the `d` column (seconds) of `durations_sql`, bucketed in SQL."""
    columns = ", ".join(f"coalesce(sum(d <= {le}), 0)" for le in buckets)
    # Only this module's constants are interpolated.
    row = conn.execute(text(
        f"SELECT count(d), coalesce(sum(d), 0.0), {columns} FROM ({durations_sql})"  # noqa: S608
    )).one()
    count, total, cumulative = int(row[0]), float(row[1]), [int(v) for v in row[2:]]
    return HistogramMetricFamily(
        name, documentation,
        buckets=[*[(str(le), n) for le, n in zip(buckets, cumulative, strict=True)],
                 ("+Inf", count)],
        sum_value=total)


_LAUNCH_DURATIONS = (
    "SELECT max(0.0, (julianday(started_at) - julianday(created_at)) * 86400.0) AS d "
    "FROM sandbox WHERE started_at IS NOT NULL")
_DECISION_DURATIONS = (
    "SELECT max(0.0, (julianday(max(d.created_at)) - julianday(r.created_at)) * 86400.0) "
    "AS d FROM release_request r JOIN release_decision d ON d.release_id = r.id "
    "WHERE r.status IN ('approved', 'released', 'rejected') GROUP BY r.id")


class PlatformCollector(Collector):
    """Every `sealroom_*` family, read in one snapshot of the database per scrape."""

    def __init__(self, sealroom: Sealroom) -> None:
        self.sealroom = sealroom
        self.tally = AuditTally()
        self.engine = EngineProbe(sealroom)

    def collect(self) -> Iterator[Metric]:
        with self.sealroom.read() as session:
            conn = session.connection()
            head = int(conn.execute(text(
                "SELECT coalesce(max(id), 0) FROM audit_event")).scalar_one())
            tally = self.tally.advance(conn, head)
            yield from self._sandboxes(conn)
            yield from self._releases(conn)
            yield from self._audit(conn, head)
            yield from self._disclosure(conn)
            yield from self._ssh(conn)
        yield from _tallied(tally)
        yield GaugeMetricFamily("sealroom_engine_up", "1 if the container engine answers "
                                "(asked at most every 15 s), else 0",
                                value=int(self.engine.answer()))
        info = GaugeMetricFamily("sealroom_build_info", "The console's version and the "
                                 "active policy version (always 1)",
                                 labels=["version", "policy_version"])
        info.add_metric([_version(), str(self.sealroom.policy.version)], 1)
        yield info

    def _sandboxes(self, conn: Connection) -> Iterator[Metric]:
        found = {(status, kind): n for status, kind, n in conn.execute(text(
            "SELECT status, kind, count(*) FROM sandbox GROUP BY status, kind"))}
        family = GaugeMetricFamily("sealroom_sandboxes", "Sandboxes by status and kind "
                                   "(single container or MPI cluster)",
                                   labels=["status", "kind"])
        kinds = sorted({*KINDS, *(bounded(k) for _, k in found)})
        for status in SandboxStatus:
            for kind in kinds:
                family.add_metric([status.value, kind], found.get((status.value, kind), 0))
        yield family
        yield _histogram(conn, _LAUNCH_DURATIONS, LAUNCH_BUCKETS,
                         "sealroom_sandbox_launch_duration_seconds",
                         "Seconds from a sandbox's record (its code staged and containers "
                         "created) to it running, over every sandbox that ran")

    def _releases(self, conn: Connection) -> Iterator[Metric]:
        found: dict[str, int] = {status: n for status, n in conn.execute(text(
            "SELECT status, count(*) FROM release_request GROUP BY status"))}
        family = GaugeMetricFamily("sealroom_release_requests", "Release requests by status",
                                   labels=["status"])
        for status in ReleaseStatus:
            family.add_metric([status.value], found.get(status.value, 0))
        yield family
        yield _histogram(conn, _DECISION_DURATIONS, DECISION_BUCKETS,
                         "sealroom_release_decision_seconds",
                         "Seconds from a release request to the approval or rejection that "
                         "decided it, over every decided request")

    def _audit(self, conn: Connection, head: int) -> Iterator[Metric]:
        yield GaugeMetricFamily("sealroom_audit_head_event_id",
                                "Id of the newest event in the audit chain", value=head)
        checkpoint = conn.execute(text(
            "SELECT tree_size, time FROM audit_checkpoint ORDER BY tree_size DESC "
            "LIMIT 1")).first()
        yield GaugeMetricFamily("sealroom_audit_checkpoint_tree_size", "Events covered by "
                                "the newest signed checkpoint (0: none yet)",
                                value=checkpoint[0] if checkpoint else 0)
        yield GaugeMetricFamily("sealroom_audit_checkpoint_timestamp_seconds",
                                "Unix time of the newest signed checkpoint (0: none yet)",
                                value=_seconds(checkpoint[1]) if checkpoint else 0.0)
        last = conn.execute(text(
            "SELECT time, outcome, details FROM audit_event WHERE action = :action "
            "ORDER BY id DESC LIMIT 1"), {"action": AuditAction.AUDIT_VERIFY.value}).first()
        details: dict[str, Any] = json.loads(last[2]) if last else {}
        yield GaugeMetricFamily(
            "sealroom_audit_chain_verification_ok", "1 if the last whole-chain verification "
            "found the chain intact, 0 if it found a break (-1: never verified)",
            value=(1 if last[1] == Outcome.OK else 0) if last else -1)
        yield GaugeMetricFamily(
            "sealroom_audit_chain_verified_up_to_event_id", "Id of the last event the last "
            "whole-chain verification vouched for", value=int(details.get("verified_up_to")
                                                             or 0))
        yield GaugeMetricFamily("sealroom_audit_chain_verification_timestamp_seconds",
                                "Unix time of the last whole-chain verification (0: never)",
                                value=_seconds(last[0]) if last else 0.0)

    def _disclosure(self, conn: Connection) -> Iterator[Metric]:
        budget = self.sealroom.policy.disclosure
        by_user = GaugeMetricFamily("sealroom_disclosure_user_spent_today_bytes",
                                    "Bytes of sandbox content shown to each user today (UTC), "
                                    "by channel (the user's id, never a name)",
                                    labels=["user_id", "channel"])
        for user_id, channel, spent in conn.execute(text(
                'SELECT u.id, d.channel, sum(d.bytes) FROM disclosure_item AS d '
                'JOIN "user" AS u ON u.name = d.user WHERE d.day = :day '
                'GROUP BY u.id, d.channel'), {"day": today()}):
            by_user.add_metric([str(user_id), bounded(channel)], spent)
        yield by_user
        by_channel = GaugeMetricFamily("sealroom_disclosure_spent_bytes", "Bytes of sandbox "
                                       "content shown to anyone, all time, by channel",
                                       labels=["channel"])
        for channel, spent in conn.execute(text(
                "SELECT channel, sum(bytes) FROM disclosure_item GROUP BY channel")):
            by_channel.add_metric([bounded(channel)], spent)
        yield by_channel
        yield GaugeMetricFamily("sealroom_disclosure_user_daily_limit_bytes", "The active "
                                "policy's daily disclosure budget per user",
                                value=budget.per_user_daily_bytes)
        yield GaugeMetricFamily("sealroom_disclosure_sandbox_limit_bytes", "The active "
                                "policy's disclosure budget per sandbox",
                                value=budget.per_sandbox_bytes)

    def _ssh(self, conn: Connection) -> Iterator[Metric]:
        opened, still_open = conn.execute(text(
            "SELECT count(*), coalesce(sum(ended_at IS NULL), 0) FROM terminal_session")).one()
        yield GaugeMetricFamily("sealroom_ssh_sessions_open", "Terminal sessions open now",
                                value=still_open)
        yield CounterMetricFamily("sealroom_ssh_sessions_opened", "Terminal sessions opened "
                                  "through the SSH gateway", value=opened)


def _tallied(tally: AuditTally) -> Iterator[Metric]:
    events = CounterMetricFamily("sealroom_audit_events", "Events written to the audit "
                                 "chain, by action and outcome",
                                 labels=["action", "outcome"])
    for (action, outcome), n in sorted(tally.events.items()):
        events.add_metric([bounded(action), bounded(outcome)], n)
    yield events
    launches = CounterMetricFamily("sealroom_sandbox_launches", "Sandbox launches asked "
                                   "for, by outcome (ok, denied, failed)",
                                   labels=["outcome"])
    for outcome in Outcome:
        launches.add_metric([outcome.value],
                            tally.events[(AuditAction.SANDBOX_LAUNCH.value, outcome.value)])
    yield launches
    yield _counter("sealroom_sandbox_launch_refusals", "Launches refused, by the policy "
                   "rule that refused them (none: no rule, e.g. a malformed request)",
                   "rule", tally.launch_refusals)
    yield _counter("sealroom_sandbox_launch_failures", "Launches that failed (not "
                   "refused), by error class (e.g. engine_unavailable)", "reason",
                   tally.launch_failures, always=list(FAILURE_CLASSES))
    yield _counter("sealroom_release_check_failures", "Release requests that failed each "
                   "gate check", "check", tally.check_failures, always=sorted(_CHECKS))
    yield _counter("sealroom_login_failures", "Refused console logins: wrong user name "
                   "or password (credentials) or over the login rate (rate_limited)",
                   "kind", tally.login_failures, always=["credentials", "rate_limited"])
    ended = CounterMetricFamily("sealroom_ssh_sessions_ended", "Terminal sessions ended, "
                                "by outcome (ok: closed; denied: ended by the policy "
                                "rule named; failed) and rule",
                                labels=["outcome", "rule"])
    for (outcome, rule), n in sorted(tally.ssh_ended.items()):
        ended.add_metric([outcome, rule], n)
    yield ended
    yield CounterMetricFamily("sealroom_ssh_auth_refusals", "SSH connections refused at "
                              "authentication (an unknown, removed or wrong user's key)",
                              value=tally.events[(AuditAction.SSH_AUTH.value,
                                                  Outcome.DENIED.value)])


def _counter(name: str, documentation: str, label: str, counts: Counter[str], *,
             always: list[str] | None = None) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=[label])
    for value in sorted({*(always or ()), *counts}):
        family.add_metric([value], counts.get(value, 0))
    return family


def _version() -> str:
    try:
        return metadata.version("sealroom")
    except metadata.PackageNotFoundError:
        return "unknown"


def registry_for(sealroom: Sealroom) -> CollectorRegistry:
    """A registry holding only the platform's collector (no process or GC metrics: several
    processes serve it, and they report the database's truth, not their own)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PlatformCollector(sealroom))
    return registry
