"""The disclosure ledger: every piece of sandbox-written content shown to a person before a
release, counted once per sandbox, against the policy's per-sandbox and per-user daily budgets.

Channels spend here in the same transaction as the audit event that records the showing, so
the ledger and the audit log never disagree. Re-showing an item spends nothing.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func
from sqlmodel import Session, col, select

from audit.chain import utc_now
from console.core import Sealroom
from console.models import DisclosureItem
from policies.evaluator import PolicyDecision, PolicyEvaluator


class Channel(enum.StrEnum):
    LOG = "log"
    OUTBOX_NAME = "outbox_name"
    TERMINAL = "terminal"  # blocks of a terminal session's output (console/ssh)
    METRICS = "metrics"  # training-metric points and series names (training_metrics)


@dataclass(frozen=True)
class Spending:
    """What a showing cost and where the budgets stand after it."""

    decision: PolicyDecision
    shown: tuple[str, ...]  # the items that may be shown (new ones were charged)
    spent: int  # bytes charged now
    sandbox_total: int
    user_day_total: int


def today() -> str:
    return datetime.now(UTC).date().isoformat()


def sandbox_total(session: Session, sandbox_id: str) -> int:
    return int(session.exec(select(func.coalesce(func.sum(DisclosureItem.bytes), 0)).where(
        DisclosureItem.sandbox_id == sandbox_id)).one())


def user_day_total(session: Session, user: str, day: str) -> int:
    return int(session.exec(select(func.coalesce(func.sum(DisclosureItem.bytes), 0)).where(
        DisclosureItem.user == user).where(DisclosureItem.day == day)).one())


def spend(session: Session, evaluator: PolicyEvaluator, *, sandbox_id: str, user: str,
          channel: Channel, items: Sequence[tuple[str, int]]) -> Spending:
    """Charge the items (key, bytes), in order, that were never shown for this sandbox, while
    the budgets allow; items already shown are free. Items past the budget are left out of
    `shown` (and so, for ordered channels like the log, everything after them)."""
    keys = [key for key, _ in items]
    known: set[str] = set()
    for start in range(0, len(keys), 500):  # SQLite's bound-parameter limit
        known.update(session.exec(select(DisclosureItem.item).where(
            DisclosureItem.sandbox_id == sandbox_id).where(
            DisclosureItem.channel == channel.value).where(
            col(DisclosureItem.item).in_(keys[start:start + 500]))).all())
    day = today()
    box, mine = sandbox_total(session, sandbox_id), user_day_total(session, user, day)
    wanted = sum(size for key, size in items if key not in known)
    decision, room = evaluator.disclosure(sandbox_spent=box, user_day_spent=mine,
                                          wanted=wanted)
    shown: list[str] = []
    spent = 0
    now = utc_now()
    for key, size in items:
        if key not in known:
            if spent + size > room:
                decision = evaluator.disclosure_spent(decision.rule)
                break
            session.add(DisclosureItem(sandbox_id=sandbox_id, user=user, day=day,
                                       channel=channel.value, item=key, bytes=size,
                                       created_at=now))
            known.add(key)
            spent += size
        shown.append(key)
    return Spending(decision, tuple(shown), spent, box + spent, mine + spent)


def reserve(session: Session, evaluator: PolicyEvaluator, *, sandbox_id: str, user: str,
            channel: Channel, key: str, wanted: int) -> tuple[int, PolicyDecision]:
    """Charge one new item of up to `wanted` bytes, as much as the budgets have room for:
    for a stream (a terminal) that pays for its bytes before it shows them. Returns the
    bytes charged (0 when a budget is spent) and the decision."""
    box, mine = sandbox_total(session, sandbox_id), user_day_total(session, user, today())
    decision, room = evaluator.disclosure(sandbox_spent=box, user_day_spent=mine,
                                          wanted=wanted)
    if room <= 0:
        return 0, evaluator.disclosure_spent(decision.rule) if wanted > 0 else decision
    session.add(DisclosureItem(sandbox_id=sandbox_id, user=user, day=today(),
                               channel=channel.value, item=key, bytes=room,
                               created_at=utc_now()))
    return room, decision


def settle(session: Session, *, sandbox_id: str, channel: Channel, key: str,
           used: int) -> None:
    """Give back what a reserved item did not use (it was charged in advance)."""
    row = session.exec(select(DisclosureItem).where(
        DisclosureItem.sandbox_id == sandbox_id).where(
        DisclosureItem.channel == channel.value).where(DisclosureItem.item == key)).first()
    if row is None or used >= row.bytes:
        return
    if used <= 0:
        session.delete(row)
    else:
        row.bytes = used
        session.add(row)


# --- what the security officer sees ------------------------------------------------------


def usage(core: Sealroom, user: str, day: str | None = None) -> dict[str, object]:
    """A user's spending on `day` (today) and per sandbox over all time, with the limits."""
    day = day or today()
    budget = core.policy.disclosure
    with core.read() as session:
        spent_today = user_day_total(session, user, day)
        rows = session.exec(
            select(DisclosureItem.sandbox_id, DisclosureItem.channel,
                   func.sum(DisclosureItem.bytes), func.max(DisclosureItem.created_at))
            .where(DisclosureItem.user == user)
            .group_by(col(DisclosureItem.sandbox_id), col(DisclosureItem.channel))).all()
    sandboxes: dict[str, dict[str, object]] = {}
    for sandbox_id, channel, total, last in rows:
        entry = sandboxes.setdefault(sandbox_id, {
            "sandbox": sandbox_id, "spent": 0, "limit": budget.per_sandbox_bytes,
            "channels": {}, "last": ""})
        entry["spent"] = int(entry["spent"]) + int(total)  # type: ignore[call-overload]
        entry["channels"][channel] = int(total)  # type: ignore[index]
        entry["last"] = max(str(entry["last"]), str(last))
    return {
        "user": user, "day": day, "spent_today": spent_today,
        "limit_per_day": budget.per_user_daily_bytes,
        "limit_per_sandbox": budget.per_sandbox_bytes,
        "policy_version": core.policy.version,
        "sandboxes": sorted(sandboxes.values(), key=lambda e: str(e["last"]), reverse=True),
    }


def users_today(core: Sealroom, day: str | None = None) -> list[dict[str, object]]:
    """Every user who was shown sandbox content on `day`, most first."""
    day = day or today()
    with core.read() as session:
        rows = session.exec(
            select(DisclosureItem.user, func.sum(DisclosureItem.bytes))
            .where(DisclosureItem.day == day).group_by(col(DisclosureItem.user))).all()
    limit = core.policy.disclosure.per_user_daily_bytes
    return sorted(({"user": u, "spent": int(b), "limit": limit} for u, b in rows),
                  key=lambda e: (-int(e["spent"]), str(e["user"])))  # type: ignore[call-overload]
