"""`sealroom audit`: export the audit log and verify an export offline, without the server.

`verify` needs no database and no server: the export, the audit public key(s) and, better, a
copy of the checkpoint file kept elsewhere. Exit 0 only when every step holds, 1 when one
fails, 2 for usage.
"""

from __future__ import annotations

import getpass
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from audit.errors import AuditError
from audit.events import Actor, AuditAction, Outcome
from audit.keys import PublicKeys
from audit.verify import STEPS, VerificationReport, verify_export

if TYPE_CHECKING:
    from console.core import Sealroom

EXIT_FAILED = 1

_STEP_LABELS = {
    "format": "the export (and checkpoint file) are in Sealroom's audit format",
    "checkpoint_signatures": "every checkpoint is signed by one of the given keys",
    "chain": "ids are consecutive, every hash holds, every event links to the last",
    "checkpoint_heads": "the chain's hash at every checkpoint is the signed head",
    "coverage": "no checkpoint vouches for events the export lacks",
}


@click.group()
def audit() -> None:
    """The audit log: export and offline verification."""


@audit.command()
@click.argument("export", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--key", "key_paths", required=True, multiple=True, metavar="PEM",
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="An audit public key (audit.pem); repeat for keys retired by rotation.")
@click.option("--checkpoints", "checkpoint_file", metavar="FILE",
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A copy of checkpoints.jsonl kept apart from the server.")
def verify(export: Path, key_paths: tuple[Path, ...], checkpoint_file: Path | None) -> None:
    """Verify EXPORT's hash chain and every checkpoint signature, offline."""
    keys = PublicKeys()
    for path in key_paths:
        try:
            keys.add(path.read_bytes())
        except (OSError, AuditError) as exc:
            raise click.BadParameter(f"{path}: {exc}", param_hint="--key") from exc
    click.echo(f"Verifying {export}" + (f" with checkpoints from {checkpoint_file}"
                                        if checkpoint_file else ""))
    report = verify_export(export, keys, checkpoint_file=checkpoint_file)
    _print_report(report)
    if not report.ok:
        sys.exit(EXIT_FAILED)


def _print_report(report: VerificationReport) -> None:
    failed_at = STEPS.index(report.step) if report.step in STEPS else len(STEPS)
    for index, step in enumerate(STEPS):
        mark = "✓" if index < failed_at else ("✗" if index == failed_at else "-")
        label = _STEP_LABELS[step] if index != failed_at else report.message
        if index > failed_at:
            label = "not checked"
        click.echo(f"  {mark} {step:<22} {label}")
    last = report.to_id if report.to_id is not None else report.verified_up_to
    span = f"{report.from_id}..{last}"
    lines = [
        f"Range        events {span}" + ("" if report.complete else
                                         "  (a RANGE, not the whole log)"),
        f"Events       {report.events} checked, chain holds up to {report.verified_up_to}",
        f"Checkpoints  {report.checkpoints} valid, vouching up to {report.checkpointed_up_to}"
        + (f"; {report.unsigned_events} later events not yet signed"
           if report.ok and report.unsigned_events else ""),
        f"Head         {report.head_hash or '(none)'}",
        f"Keys         {', '.join(k[:16] for k in report.keyids) or '(none)'}",
    ]
    if not report.ok:
        where = (f"checkpoint at tree size {report.checkpoint}"
                 if report.first_bad is None and report.checkpoint is not None
                 else f"event {report.first_bad}")
        lines.append(f"First bad    {where}: {report.kind}")
    lines += [f"Note         {note}" for note in report.notes]
    click.echo("\n".join(lines))
    if report.ok:
        click.echo("VERIFIED: " + report.message)
    else:
        click.echo(f"NOT VERIFIED ({report.kind}): {report.message}")


def _core() -> Sealroom:
    # Imported here: `verify` needs no database, so it does not load the console.
    from console.core import Sealroom
    from console.settings import Settings

    return Sealroom(Settings.from_env())


def _actor() -> Actor:
    return Actor(f"cli:{getpass.getuser()}", "operator", "cli", "local")


@audit.command()
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write here (default: standard output).")
@click.option("--from-id", type=int, default=None, help="First event id (a range).")
@click.option("--to-id", type=int, default=None, help="Last event id (a range).")
@click.option("--since", default=None, help="UTC ISO time: from the first event at or after.")
@click.option("--until", default=None, help="UTC ISO time: up to the last event at or before.")
def export(output: Path | None, from_id: int | None, to_id: int | None, since: str | None,
           until: str | None) -> None:
    """Export the audit log (from the local database) as JSON Lines for offline review.

    The export is audited, then the head is checkpointed, so a whole-log export ends at a
    signed checkpoint and verifies completely.
    """
    core = _core()
    filters = {"from_id": from_id, "to_id": to_id, "since": since, "until": until}
    # Any: the given filters become the event's details, which `record` takes as **details.
    given: dict[str, Any] = {k: v for k, v in filters.items() if v is not None}
    core.record(_actor(), AuditAction.AUDIT_EXPORT, target="audit:export", **given,
                output=str(output) if output else "-")
    core.checkpoint_if_due(force=True)
    lines = core.audit_export_lines(**filters)
    if output is None:
        stream = sys.stdout.buffer
        for line in lines:
            stream.write(line)
        stream.flush()
        return
    events = 0
    with output.open("wb") as out:
        for line in lines:
            out.write(line)
            events += line.startswith(b'{"event":')
    click.echo(f"wrote {events} events to {output}", err=True)


@audit.command()
@click.option("--all", "show_all", is_flag=True, help="Also print retired keys.")
@click.option("--rotate", is_flag=True,
              help="Make a new audit key; checkpoints signed before stay verifiable.")
def key(show_all: bool, rotate: bool) -> None:
    """Print the audit public key (PEM), for `sealroom audit verify --key`."""
    core = _core()
    if rotate:
        old = core.audit_key().keyid
        new = core.rotate_audit_key()
        core.record(_actor(), AuditAction.KEY_ROTATE, target="key:audit", retired=old,
                    active=new.keyid)
        core.checkpoint_if_due(force=True)
        click.echo(f"audit key rotated: {old[:16]} retired, {new.keyid[:16]} active", err=True)
    keys = core.audit_public_keys()
    for info in keys if show_all else keys[:1]:
        click.echo(info.pem, nl=False)


@audit.command()
def status() -> None:
    """Verify the local database's chain against its checkpoints and the checkpoint file,
    and every terminal recording against the hash the chain holds for it."""
    from console.services import recordings

    core = _core()
    report = core.verify_audit()
    named = recordings.expected(core)
    bad = recordings.problems(core, named)
    ok = report.ok and not bad
    core.record(_actor(), AuditAction.AUDIT_VERIFY, target="audit:chain",
                outcome=Outcome.OK if ok else Outcome.FAILED,
                reason=report.message if not report.ok or not bad
                else "; ".join(p.message for p in bad),
                verified_up_to=report.verified_up_to, kind=report.kind or "",
                recordings_checked=len(named),
                recording_problems=[recordings.problem_dict(p) for p in bad])
    _print_report(report)
    click.echo(f"Recordings   {len(named)} checked against the chain, {len(bad)} "
               f"{'problem' if len(bad) == 1 else 'problems'}")
    for problem in bad:
        click.echo(f"  ✗ {problem.problem:<8} {problem.message}")
    if bad:
        click.echo(f"NOT VERIFIED (recordings): {len(bad)} terminal "
                   f"{'recording is' if len(bad) == 1 else 'recordings are'} not the one the "
                   "chain names")
    if not ok:
        sys.exit(EXIT_FAILED)
