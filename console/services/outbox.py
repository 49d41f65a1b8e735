"""The outbox as people see it before a release: listed only once the sandbox has ended
(unless the policy says otherwise), hashed once in the background, and each name shown only
if the policy's name rule allows it and the disclosure budget pays for it.

Everything else a listing says is the console's own: positions, kinds, sizes, hashes, and
"file 17 (name withheld)".
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
from concurrent.futures import Future
from dataclasses import asdict, dataclass
from pathlib import PurePosixPath
from typing import BinaryIO

from audit.chain import append, utc_now
from audit.events import Actor, AuditAction, EventDraft, Outcome
from console.core import Caller, Sealroom
from console.models import OutboxManifest, Sandbox, SandboxStatus
from console.services import disclosure
from console.services.errors import BadRequest, Conflict, PolicyDenied
from policies.schema import Policy
from sandbox.errors import SandboxError
from sandbox.outbox import OutboxItem, OutboxRules

log = logging.getLogger(__name__)

_POSITION = re.compile(r"^#([1-9][0-9]{0,6})$")


def rules_of(policy: Policy) -> OutboxRules:
    rules = policy.disclosure.outbox
    return OutboxRules(name_pattern=rules.name_pattern, max_depth=rules.max_depth,
                       max_entries=rules.max_entries, max_hash_bytes=rules.max_hash_mb << 20,
                       max_hash_files=rules.max_hash_files)


def withheld_label(position: int) -> str:
    return f"file {position} (name withheld)"


#: Why hashing stopped, in the console's words.
_CAPS = {
    "max_entries": "more entries than the policy lists (disclosure.outbox.max_entries)",
    "max_hash_files": "more files than the policy hashes (disclosure.outbox.max_hash_files)",
    "max_hash_bytes": "more bytes than the policy hashes (disclosure.outbox.max_hash_mb)",
}


def name_shown(policy: Policy, path: str) -> bool:
    """Whether the active policy lets this name be shown at all (the budget decides the
    rest); the manifest's own `name_ok` was decided under the policy of its day."""
    return rules_of(policy).name_ok(PurePosixPath(path).parts)


def _name_key(path: str) -> str:
    return hashlib.sha256(path.encode("utf-8", "surrogateescape")).hexdigest()[:32]


# --- hashing, once, after the sandbox ended ------------------------------------------------


#: How long a release request waits for the outbox to be hashed before answering 409.
MANIFEST_WAIT_S = 120.0


def schedule_manifest(core: Sealroom, sandbox_id: str) -> Future[None]:
    """List and hash an ended sandbox's outbox on the background worker (once)."""
    return core.run_in_background(f"outbox:{sandbox_id}",
                                  lambda: _make_quietly(core, sandbox_id))


def _make_quietly(core: Sealroom, sandbox_id: str) -> None:
    make_manifest(core, sandbox_id)


def make_manifest(core: Sealroom, sandbox_id: str) -> OutboxManifest | None:
    with core.read() as session:
        existing = session.get(OutboxManifest, sandbox_id)
        record = session.get(Sandbox, sandbox_id)
    if existing is not None or record is None or not SandboxStatus(record.status).terminal:
        return existing
    rules = rules_of(core.policy)
    try:
        # Nothing runs in the sandbox any more, so a change while hashing is a container
        # still being torn down: look again, a few times, before saying so.
        for _attempt in range(3):
            manifest = core.storage.hash_outbox(sandbox_id, rules)
            if manifest.state != "changed":
                break
    except (SandboxError, OSError):
        log.exception("could not list the outbox of %s", sandbox_id)
        return None
    items = [asdict(item) for item in manifest.listing.items]
    detail = _CAPS.get(manifest.cap or "", "") if manifest.state == "over_cap" else \
        ("the outbox changed while it was hashed" if manifest.state == "changed" else "")
    row = OutboxManifest(sandbox_id=sandbox_id, state=manifest.state,
                         items=json.dumps(items), truncated=manifest.listing.truncated,
                         entries=manifest.listing.entries_seen, detail=detail,
                         created_at=utc_now())
    with core.transaction() as session:
        if session.get(OutboxManifest, sandbox_id) is not None:
            return None
        session.add(row)
        append(session, EventDraft(
            Actor.system("outbox"), AuditAction.OUTBOX_HASH, f"sandbox:{sandbox_id}",
            Outcome.OK if manifest.state == "ready" else Outcome.FAILED, detail,
            details={"files": sum(1 for i in items if i["kind"] == "file"),
                     "entries": manifest.listing.entries_seen,
                     "truncated": manifest.listing.truncated, "state": manifest.state,
                     "hashed_bytes": manifest.bytes_hashed,
                     "hashed_files": manifest.files_hashed}))
    return row


def manifest_items(core: Sealroom, sandbox_id: str) -> tuple[OutboxManifest | None,
                                                               list[OutboxItem]]:
    with core.read() as session:
        row = session.get(OutboxManifest, sandbox_id)
    if row is None:
        return None, []
    return row, [OutboxItem(**item) for item in json.loads(row.items)]


# --- listing, as the owner sees it ----------------------------------------------------------


@dataclass(frozen=True)
class _Shown:
    item: OutboxItem
    name: str | None
    reason: str  # why the name is withheld ("" when shown)


def listing(core: Sealroom, caller: Caller, record: Sandbox) -> dict[str, object]:
    """The owner's view of the outbox: one entry per item, names only where the policy's
    name rule allows them and the disclosure budget pays for them; audited, with what was
    spent, in the same transaction as the ledger."""
    policy = core.policy
    target = f"sandbox:{record.id}"
    running = not SandboxStatus(record.status).terminal
    truncated, entries, detail = False, 0, ""
    if running:
        if not policy.disclosure.outbox.list_while_running:
            reason = "the outbox is listed once the sandbox has ended"
            core.record(caller.actor, AuditAction.OUTBOX_VIEW, target=target,
                        outcome=Outcome.DENIED, reason=reason, request_id=caller.request_id,
                        rule="disclosure.outbox.list_while_running",
                        policy_version=policy.version)
            raise PolicyDenied(reason, rule="disclosure.outbox.list_while_running",
                               policy_version=policy.version)
        found = core.storage.list_outbox(record.id, rules_of(policy))
        state, items = "running", list(found.items)
        truncated, entries = found.truncated, found.entries_seen
    else:
        row, items = manifest_items(core, record.id)
        if row is None:
            schedule_manifest(core, record.id)
            state = "hashing"
        else:
            state, truncated, entries, detail = row.state, row.truncated, row.entries, \
                row.detail
    candidates = [(_name_key(i.path), len(i.path.encode("utf-8", "surrogateescape")))
                  for i in items if i.name_ok and name_shown(policy, i.path)]
    with core.transaction() as session:
        spending = disclosure.spend(session, core.evaluator, sandbox_id=record.id,
                                    user=caller.name, channel=disclosure.Channel.OUTBOX_NAME,
                                    items=candidates)
        paid = set(spending.shown)
        shown = []
        for item in items:
            if not (item.name_ok and name_shown(policy, item.path)):
                shown.append(_Shown(item, None, "name"))
            elif _name_key(item.path) in paid:
                shown.append(_Shown(item, item.path, ""))
            else:
                shown.append(_Shown(item, None, "budget"))
        withheld_budget = sum(1 for s in shown if s.reason == "budget")
        append(session, EventDraft(
            caller.actor, AuditAction.OUTBOX_VIEW, target,
            request_id=caller.request_id,
            details={"state": state, "files": len(items),
                     "names_shown": sum(1 for s in shown if s.name is not None),
                     "names_withheld": sum(1 for s in shown if s.name is None),
                     "withheld_for_budget": withheld_budget, "spent": spending.spent,
                     "sandbox_spent": spending.sandbox_total,
                     **({"rule": spending.decision.rule} if withheld_budget else {}),
                     "policy_version": policy.version}))
    body: dict[str, object] = {
        "sandbox": record.id, "state": state, "truncated": truncated, "entries": entries,
        "files": [_entry(s) for s in shown]}
    if detail:
        body["detail"] = detail
    if withheld_budget:
        body["disclosure"] = {"rule": spending.decision.rule,
                              "message": spending.decision.reason,
                              "withheld_for_budget": withheld_budget}
    return body


def _entry(shown: _Shown) -> dict[str, object]:
    item = shown.item
    return {"position": item.position, "name": shown.name,
            "label": shown.name if shown.name is not None else withheld_label(item.position),
            "withheld": shown.name is None, "size": item.size, "sha256": item.sha256,
            "kind": item.kind}


# --- picking files for a release -------------------------------------------------------------


@dataclass(frozen=True)
class ChosenFile:
    """An outbox file named in a release request: its real path, what people see before
    release, and what the manifest says it is."""

    path: str
    label: str
    size: int
    sha256: str


def choose(core: Sealroom, sandbox_id: str, refs: list[str]) -> list[ChosenFile]:
    """Resolve names (only names the policy lets be shown) or positions (`#17`) against the
    manifest; anything else is refused the same way, so a guess confirms nothing."""
    policy = core.policy
    row, items = manifest_items(core, sandbox_id)
    if row is None:  # wait for the background worker; the request thread never hashes
        with contextlib.suppress(TimeoutError):
            schedule_manifest(core, sandbox_id).result(timeout=MANIFEST_WAIT_S)
        row, items = manifest_items(core, sandbox_id)
    if row is None:
        raise Conflict("the outbox is still being listed and hashed; try again in a moment")
    by_position = {i.position: i for i in items}
    by_name = {i.path: i for i in items if i.name_ok and name_shown(policy, i.path)}
    chosen: list[ChosenFile] = []
    for ref in refs:
        match = _POSITION.match(ref)
        item = by_position.get(int(match.group(1))) if match else by_name.get(ref)
        if item is None:
            raise BadRequest("a requested file is not in the outbox listing (name shown files "
                             "by name and the others by position, like #17)")
        if item.kind != "file" or item.sha256 is None:
            what = withheld_label(item.position) if item.path not in by_name else item.path
            raise BadRequest(f"{what} cannot be released: "
                             + ("it is not a regular file" if item.kind != "file"
                                else "the outbox was over its hashing cap before it"))
        label = item.path if item.path in by_name else withheld_label(item.position)
        chosen.append(ChosenFile(item.path, label, item.size, item.sha256))
    return chosen


def open_file(core: Sealroom, sandbox_id: str, path: str) -> BinaryIO:
    return core.storage.open_outbox_file(sandbox_id, path)
