"""Limits that hold under concurrent requests, and the record of refusals in a flood: login
attempts counted per address and user name, per address and per user name; refused requests
recorded one by one up to a per-source budget, then answered 429 and counted into one audit
event per source and period, so a flood can neither fill the disk nor go unrecorded.

The counts live in this process's memory. The console is one waitress process serving
requests on several threads (`sealroom up`), and every check-and-count below happens under
one lock, so N concurrent attempts can never all pass a check before any of them is counted.
Several console processes would each count on their own (not a supported deployment).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from audit.errors import AuditWriteFailed
from audit.events import Actor, AuditAction, Outcome
from console.settings import Rate, Settings, parse_rate

if TYPE_CHECKING:
    from console.core import Sealroom

log = logging.getLogger(__name__)

Clock = Callable[[], float]

#: Addresses remembered per user name as "logged in from here lately"; these are exempt
#: from the per-name limit, so nobody can lock a user out of the place they work from.
KNOWN_ADDRESSES_PER_USER = 8
#: Distinct targets ("GET /path") listed in one aggregate event; the rest are summed.
TARGETS_LISTED = 10


# --- sliding windows -----------------------------------------------------------------------


class _Window:
    """Admission times per key within the last `rate.seconds`. Not locked: its owner calls it
    under the owner's lock."""

    def __init__(self, rate: Rate) -> None:
        self.rate = rate
        self._times: dict[str, deque[float]] = {}

    def room(self, key: str, now: float) -> bool:
        times = self._times.get(key)
        if times is None:
            return True
        while times and times[0] <= now - self.rate.seconds:
            times.popleft()
        return len(times) < self.rate.amount

    def retry_after(self, key: str, now: float) -> float:
        times = self._times.get(key)
        return max(0.0, times[0] + self.rate.seconds - now) if times else 0.0

    def add(self, key: str, at: float) -> None:
        self._times.setdefault(key, deque()).append(at)

    def give_back(self, key: str, at: float) -> None:
        times = self._times.get(key)
        if times is not None and at in times:
            times.remove(at)

    def sweep(self, now: float) -> None:
        """Forget keys with nothing left in the window (memory stays bounded by the keys
        seen in one period)."""
        for key in [k for k, t in self._times.items()
                    if not t or t[-1] <= now - self.rate.seconds]:
            del self._times[key]


@dataclass(frozen=True)
class LoginAdmission:
    """May this attempt check a password? If not, which limit said no, and for how long."""

    allowed: bool
    name: str
    address: str
    at: float
    refused_by: str = ""  # "user and address" | "address" | "user"
    retry_after_s: float = 0.0
    counted_for_user: bool = True

    def __bool__(self) -> bool:
        return self.allowed


class LoginThrottle:
    """Password attempts, hit-then-check: an attempt is counted in every window before its
    password is checked, and only if every window has room; a successful login gives its
    attempt back. So at most the limit of wrong passwords are ever checked per window,
    however many arrive at once, and a refused attempt costs no window anything.

    Three windows: per (user name, address) — one person guessing one account; per address —
    one address guessing many accounts (looser, as people behind one NAT share it); per user
    name from any address — guessing spread over many addresses. The last is what could
    lock a user out from everywhere, so it is bounded twice: one address can use at most its
    own allowance of it (a lock-out needs `per_user / per_user_and_address` addresses, and
    ends a period after their last attempt), and addresses the user lately logged in from
    are exempt from it (they still have their own windows)."""

    def __init__(self, per_user_and_address: Rate, per_address: Rate, per_user: Rate, *,
                 clock: Clock = time.monotonic) -> None:
        self._pair = _Window(per_user_and_address)
        self._address = _Window(per_address)
        self._user = _Window(per_user)
        self._known: dict[str, OrderedDict[str, None]] = {}
        self._clock = clock
        self._lock = threading.Lock()
        self._swept = 0.0

    def admit(self, name: str, address: str) -> LoginAdmission:
        name = name.strip().lower()[:64]
        pair = f"{name}\n{address}"
        with self._lock:
            now = self._clock()
            self._sweep(now)
            counted_for_user = address not in self._known.get(name, ())
            for window, key, label in ((self._pair, pair, "user and address"),
                                       (self._address, address, "address"),
                                       (self._user, name, "user")):
                if window is self._user and not counted_for_user:
                    continue
                if not window.room(key, now):
                    return LoginAdmission(False, name, address, now, label,
                                          window.retry_after(key, now), counted_for_user)
            self._pair.add(pair, now)
            self._address.add(address, now)
            if counted_for_user:
                self._user.add(name, now)
            return LoginAdmission(True, name, address, now, counted_for_user=counted_for_user)

    def succeeded(self, admission: LoginAdmission) -> None:
        """The attempt was right: give it back, and remember the address for the user."""
        if not admission.allowed:
            return
        name, address, at = admission.name, admission.address, admission.at
        with self._lock:
            self._pair.give_back(f"{name}\n{address}", at)
            self._address.give_back(address, at)
            if admission.counted_for_user:
                self._user.give_back(name, at)
            known = self._known.setdefault(name, OrderedDict())
            known[address] = None
            known.move_to_end(address)
            while len(known) > KNOWN_ADDRESSES_PER_USER:
                known.popitem(last=False)

    def _sweep(self, now: float) -> None:
        if now - self._swept < 60:
            return
        self._swept = now
        for window in (self._pair, self._address, self._user):
            window.sweep(now)


# --- refusals --------------------------------------------------------------------------------


@dataclass
class RefusalCount:
    """Refusals from one source (as one actor) in one period that were counted rather than
    recorded one by one: what the aggregate `auth:request:deny` event says."""

    actor: Actor
    period: int
    seconds: float
    first: float
    last: float
    count: int = 0
    actions: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    targets: Counter[str] = field(default_factory=Counter)

    def add(self, action: str, target: str, reason: str, now: float) -> None:
        self.count += 1
        self.last = now
        self.actions[action] += 1
        _tally(self.reasons, reason[:200])
        _tally(self.targets, target[:200])

    def merge(self, other: RefusalCount) -> None:
        self.count += other.count
        self.first, self.last = min(self.first, other.first), max(self.last, other.last)
        self.actions.update(other.actions)
        self.reasons.update(other.reasons)
        self.targets.update(other.targets)


def _tally(counter: Counter[str], key: str) -> None:
    """Count `key`, listing at most `TARGETS_LISTED` distinct keys (the rest as "(other)"),
    so an event stays small whatever a flood sends."""
    if key in counter or len(counter) < TARGETS_LISTED:
        counter[key] += 1
    else:
        counter["(other)"] += 1


@dataclass
class _SourcePeriod:
    period: int
    recorded: int = 0
    counted: dict[Actor, RefusalCount] = field(default_factory=dict)


class RefusalLedger:
    """Per source address, the refusals of the current period (fixed periods of the rate's
    length, a minute by default): the first `rate.amount` are to be recorded one by one;
    every later one is counted here instead, and answered 429.

    What was counted is recorded as one event per source (and actor) once its period is
    over: by the next refusal from anyone (`refuse` notices a period has ended), by the
    console's supervisor pass (`sealroom up` runs one every second, so a flood that simply
    stops is recorded within about a second of its period's end), and at shutdown
    (`Sealroom.close`), which records the current period too. A count whose event cannot be
    written is kept and tried again."""

    def __init__(self, rate: Rate, *, clock: Clock = time.time) -> None:
        self.rate = rate
        self._clock = clock
        self._lock = threading.Lock()
        self._sources: dict[str, _SourcePeriod] = {}
        self._due: list[RefusalCount] = []
        self._swept = self._period(clock())

    def _period(self, now: float) -> int:
        return int(now // self.rate.seconds)

    def refuse(self, actor: Actor, action: str, target: str, reason: str) -> bool:
        """Count one refusal from `actor.source`: True when it is within the source's budget
        and must be recorded on its own, False when it has been counted here."""
        with self._lock:
            now = self._clock()
            period = self._period(now)
            if period > self._swept:
                self._close_periods(period)
            state = self._sources.get(actor.source)  # (only sources of this period are kept)
            if state is None:
                state = self._sources[actor.source] = _SourcePeriod(period)
            if state.recorded < self.rate.amount:
                state.recorded += 1
                return True
            count = state.counted.get(actor)
            if count is None:
                count = state.counted[actor] = RefusalCount(actor, period, self.rate.seconds,
                                                            now, now)
            count.add(action, target, reason, now)
            return False

    def due(self, *, everything: bool = False) -> list[RefusalCount]:
        """Take the counts of periods that are over (`everything`: of the current one too,
        as at shutdown; the sources keep their budgets), one per actor and period."""
        with self._lock:
            period = self._period(self._clock())
            if period > self._swept:
                self._close_periods(period)
            if everything:
                for state in self._sources.values():
                    self._due.extend(state.counted.values())
                    state.counted = {}
            taken, self._due = self._due, []
        merged: dict[tuple[Actor, int], RefusalCount] = {}
        for count in taken:
            key = (count.actor, count.period)
            if key in merged:
                merged[key].merge(count)
            else:
                merged[key] = count
        return list(merged.values())

    def retry_after_s(self) -> int:
        """Seconds until the current period ends (a refused source's `Retry-After`)."""
        now = self._clock()
        return max(1, int((self._period(now) + 1) * self.rate.seconds - now + 0.999))

    def has_due(self) -> bool:
        """Whether `due` would give anything now (cheap: for the request path)."""
        with self._lock:
            return bool(self._due) or self._period(self._clock()) > self._swept

    def put_back(self, counts: list[RefusalCount]) -> None:
        """Counts whose events could not be written: kept for the next attempt."""
        with self._lock:
            self._due[:0] = counts

    def _close_periods(self, current: int) -> None:
        """Move every count of a period before `current` to the due list; forget sources
        whose period is over (the table holds the sources of one period)."""
        for source in [s for s, state in self._sources.items() if state.period < current]:
            self._due.extend(self._sources.pop(source).counted.values())
        self._swept = current


def _iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="seconds").replace(
        "+00:00", "Z")


def record_counted(core: Sealroom, ledger: RefusalLedger, *, everything: bool = False) -> int:
    """Write one `auth:request:deny` event for each count that is due; the number written.
    Counts that cannot be written stay in the ledger; the error goes to the log."""
    counts = ledger.due(everything=everything)
    for done, count in enumerate(counts):
        start = count.period * count.seconds
        try:
            core.record(
                count.actor, AuditAction.REQUEST_DENIED, target=f"source:{count.actor.source}",
                outcome=Outcome.DENIED,
                reason=f"{count.count} more refused request(s) from this source, counted "
                       f"rather than recorded one by one (over {ledger.rate})",
                count=count.count, suppressed=True, limit=str(ledger.rate),
                period={"from": _iso(start), "to": _iso(start + count.seconds)},
                first=_iso(count.first), last=_iso(count.last),
                actions=dict(count.actions), reasons=dict(count.reasons.most_common()),
                targets=dict(count.targets.most_common()))
        except AuditWriteFailed as exc:
            ledger.put_back(counts[done:])
            log.error("could not record %d counted refusal(s); kept for the next try: %s",
                      sum(c.count for c in counts[done:]), exc)
            return done
    return len(counts)


@dataclass(frozen=True)
class RequestLimits:
    """One console's limits, made from its settings (`console.extensions.limits` binds them
    to an app)."""

    login: LoginThrottle
    refusals: RefusalLedger

    @classmethod
    def from_settings(cls, settings: Settings) -> RequestLimits:
        return cls(LoginThrottle(parse_rate(settings.login_rate),
                                 parse_rate(settings.login_rate_per_address),
                                 parse_rate(settings.login_rate_per_user)),
                   RefusalLedger(parse_rate(settings.refusal_rate)))
