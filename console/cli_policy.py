"""`sealroom policy`: validate, activate, restore and show policy documents. Exit 0 when
done, 1 when refused (an invalid document names each problem as FILE:LINE: message)."""

from __future__ import annotations

import getpass
import sys
from collections.abc import Iterable
from pathlib import Path

import click

from audit.events import Actor
from console.core import Caller, Sealroom
from console.services import policy as policy_service
from console.services.errors import ServiceError
from console.services.policy import Activation, DryRun, InvalidPolicyDocument
from console.settings import Settings
from policies.errors import PolicyProblem

EXIT_REFUSED = 1


def _core() -> Sealroom:
    return Sealroom(Settings.from_env())


def _caller() -> Caller:
    return Caller(Actor(f"cli:{getpass.getuser()}", "operator", "cli", "local"))


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise click.BadParameter(str(exc), param_hint="FILE") from exc


def _refused(path: Path | None, exc: ServiceError) -> None:
    if isinstance(exc, InvalidPolicyDocument):
        for problem in exc.problems:
            where = f"{path}:{problem.line}" if problem.line else str(path)
            field = f"{problem.path}: " if problem.path else ""
            click.echo(f"{where}: {field}{problem.message}", err=True)
        click.echo("error: the policy is not valid; nothing was changed", err=True)
    else:
        click.echo(f"error: {exc.message}", err=True)
    sys.exit(EXIT_REFUSED)


def _warn(path: Path, warnings: Iterable[PolicyProblem]) -> None:
    for warning in warnings:
        where = f"{path}:{warning.line}" if warning.line else str(path)
        click.echo(f"{where}: warning: {warning.path}: {warning.message}", err=True)


@click.group()
def policy() -> None:
    """Policies: what may be used and what may leave."""


@policy.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def validate(file: Path) -> None:
    """Check FILE against the schema and this installation (datasets, roles, users)."""
    try:
        checked = policy_service.validate(_core(), _caller(), _read(file))
    except ServiceError as exc:
        _refused(file, exc)
        return
    _warn(file, checked.warnings)
    click.echo(f"{file}: valid (sha256 {checked.sha256[:16]})")


@policy.command("dry-run")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def dry_run(file: Path) -> None:
    """What activating FILE would change (a diff against the active version) and deny; nothing
    is activated."""
    text = _read(file)
    try:
        result = policy_service.dry_run(_core(), _caller(), text)
    except ServiceError as exc:
        _refused(file, exc)
        return
    _warn(file, result.warnings)
    active, changes = policy_service.changes(_core(), text, result)
    for line in changes:
        click.echo(line.text)
    if not changes:
        click.echo(f"# the same document as the active version {active.version}")
    click.echo(f"# would become policy version {result.version} (sha256 {result.sha256[:16]})")
    _findings(result, now="would be forbidden", failed="would fail its checks",
              waits="would wait for more approvals")


@policy.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--reason", required=True, help="Why this policy is activated (recorded).")
def activate(file: Path, reason: str) -> None:
    """Make FILE the active policy, as a new version."""
    try:
        activation = policy_service.activate(_core(), _caller(), _read(file), reason)
    except ServiceError as exc:
        _refused(file, exc)
        return
    _report(activation)


@policy.command()
@click.argument("version", type=int)
@click.option("--reason", required=True, help="Why the old version comes back (recorded).")
def restore(version: int, reason: str) -> None:
    """Activate an earlier VERSION's document again, as a new version."""
    try:
        activation = policy_service.restore(_core(), _caller(), version, reason)
    except ServiceError as exc:
        _refused(None, exc)
        return
    _report(activation)


def _report(activation: Activation) -> None:
    row, result = activation.version, activation.result
    click.echo(f"policy version {row.version} is active (sha256 {row.sha256[:16]})")
    _findings(result, now="is now forbidden", failed="failed its checks",
              waits="waits for more approvals")


def _findings(result: DryRun, *, now: str, failed: str, waits: str) -> None:
    for finding in result.sandboxes:
        click.echo(f"  running sandbox {finding.id} of {finding.owner} {now}: "
                   f"{finding.rule}: {finding.reason}")
    for finding in result.releases:
        effect = failed if finding.denied else waits
        click.echo(f"  release request {finding.id} {effect}: {finding.rule}: {finding.reason}")


@policy.command()
@click.option("--version", "number", type=int, default=None,
              help="A version number (default: the active version).")
def show(number: int | None) -> None:
    """Print the active policy document (or version N), headed by who activated it and why."""
    core = _core()
    try:
        row = policy_service.get_version(core, number) if number \
            else policy_service.active_version(core)
    except ServiceError as exc:
        _refused(None, exc)
        return
    policy_service.record_view(core, _caller(), f"policy:{row.version}")
    active = policy_service.active_version(core).version
    state = "active" if row.version == active else f"not active (version {active} is)"
    click.echo(f"# policy version {row.version}, {state}\n"
               f"# activated {row.created_at} by {row.author}: {row.reason}\n"
               f"# sha256 {row.sha256}")
    click.echo(row.text, nl=not row.text.endswith("\n"))


@policy.command()
@click.argument("user", required=False)
def disclosure(user: str | None) -> None:
    """How much sandbox-written content USER has been shown (today and per sandbox), or every
    user's total today."""
    from audit.events import AuditAction
    from console.services import disclosure as disclosure_service

    core = _core()
    core.record(_caller().actor, AuditAction.DISCLOSURE_VIEW,
                target=f"user:{user}" if user else "disclosure:today")
    if not user:
        rows = disclosure_service.users_today(core)
        click.echo(f"# {disclosure_service.today()}: bytes of sandbox content shown")
        for row in rows:
            click.echo(f"{row['user']}\t{row['spent']}\tof {row['limit']}")
        if not rows:
            click.echo("nobody has been shown sandbox content today")
        return
    usage = disclosure_service.usage(core, user)
    click.echo(f"{user}: {usage['spent_today']:,} of {usage['limit_per_day']:,} bytes "
               f"today ({usage['day']})")
    for entry in usage["sandboxes"]:  # type: ignore[attr-defined]
        channels = ", ".join(f"{k} {v:,}" for k, v in sorted(entry["channels"].items()))
        click.echo(f"  {entry['sandbox']}: {entry['spent']:,} of {entry['limit']:,} bytes "
                   f"({channels})")
