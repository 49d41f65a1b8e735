"""The `sealroom` command: serve the console, and the operator's tasks (users, tokens,
datasets, images, demo data). Refusals print a message and exit non-zero."""

from __future__ import annotations

import getpass
import os
import secrets
import signal
import sys
import tempfile
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from audit.events import Actor, AuditAction
from console.cli_audit import audit
from console.cli_client import project, sandbox, ssh_key
from console.cli_policy import policy
from console.cli_release import release
from console.core import Caller, Sealroom
from console.files import Repair
from console.services.errors import ServiceError
from console.settings import Settings, SettingsError

if TYPE_CHECKING:
    from console.metrics import MetricsServer
    from console.ssh.server import Gateway

F = TypeVar("F", bound=Callable[..., Any])

EXIT_REFUSED = 1
EXIT_MISCONFIGURED = 2
EXIT_UNAVAILABLE = 3

DEMO_USERS = (
    ("alice", "engineer"),
    ("bob", "approver"),
    ("carol", "approver"),
    ("sam", "security_officer"),
    ("audrey", "auditor"),
    ("admin", "admin"),
)


def _caller() -> Caller:
    return Caller(Actor(f"cli:{getpass.getuser()}", "operator", "cli", "local"))


def _core() -> Sealroom:
    # The backend is built only if the command drives a sandbox (`Sealroom.backend`).
    return Sealroom(Settings.from_env())


def _refusals(command: F) -> F:
    @wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except ServiceError as exc:
            click.echo(f"error: {exc.message}", err=True)
            sys.exit(EXIT_UNAVAILABLE if exc.status >= 500 else EXIT_REFUSED)

    return wrapper  # type: ignore[return-value]


class _SealroomGroup(click.Group):
    """Every command reads its settings first; a setting it cannot start with (an unknown
    `SEALROOM_BACKEND`) is one clear line and exit 2, not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SettingsError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(EXIT_MISCONFIGURED)


@click.group(cls=_SealroomGroup)
def main() -> None:
    """Sealroom: sealed training sandboxes."""


_REPAIRS_SHOWN = 50


def _say_repairs(repairs: list[Repair]) -> None:
    """Tell the operator which modes under the data directory were wrong (and are fixed)."""
    if not repairs:
        click.echo("file modes under the data directory: all private, nothing to repair")
        return
    click.echo(f"repaired {len(repairs)} file mode(s) under the data directory "
               "(recorded as system:files:repair):")
    for repair in repairs[:_REPAIRS_SHOWN]:
        click.echo(f"  {repair}")
    if len(repairs) > _REPAIRS_SHOWN:
        click.echo(f"  ... and {len(repairs) - _REPAIRS_SHOWN} more")


@main.command()
def init() -> None:
    """Create the data directory, migrate the database and make the installation keys;
    repair (and list) any mode under it that is not private."""
    previous = os.umask(0o077)  # what init makes is the console's alone (console/files.py)
    try:
        core = _core()
        core.settings.secret_key()
        key = core.gate_key().key
        audit_key = core.audit_key()
        core.settings.audit_checkpoint_file.parent.mkdir(parents=True, exist_ok=True)
        _say_repairs(core.secure_files())
    finally:
        os.umask(previous)
    click.echo(f"initialised {core.settings.home} (release gate key {key.keyid[:16]}, "
               f"audit key {audit_key.keyid[:16]})")


@main.command()
@click.option("--host", default=None, help="address to bind (default SEALROOM_BIND or 127.0.0.1)")
@click.option("--port", default=None, type=int, help="port (default SEALROOM_PORT or 8000)")
@click.option("--threads", default=8, show_default=True)
@click.option("--ssh-port", default=None, type=int,
              help="also serve the SSH gateway on this port (0: not at all; default "
                   "SEALROOM_SSH_PORT or 2222)")
def up(host: str | None, port: int | None, threads: int, ssh_port: int | None) -> None:
    """Reconcile with the engine and serve the console (and the SSH gateway)."""
    import waitress

    from console.app import create_app
    from console.services import model_risk as model_risk_service
    from console.services import releases as release_service
    from console.services import sandboxes as sandbox_service

    settings = Settings.from_env()
    os.umask(0o077)  # whatever the console makes is its own alone (see console/files.py)
    core = Sealroom(settings)
    core.record(Actor.system(), AuditAction.CONSOLE_START, target="console",
                home=str(settings.home))
    _say_repairs(core.secure_files())
    try:
        sandbox_service.reconcile(core)
    except Exception as exc:  # a dead engine must not keep the console down
        click.echo(f"warning: could not reconcile with the container engine: {exc}", err=True)
    core.gate_key()  # made on first start; fails early if the passphrase is wrong
    release_service.resume_sealing(core)
    model_risk_service.resume(core)  # attacks a stop cut short run again
    app = create_app(sealroom=core, supervise=True)
    bind_host, bind_port = host or settings.host, port or settings.port
    exporter = _start_metrics(core, settings.metrics_bind)
    gateway = _start_gateway(core, bind_host, settings.ssh_port if ssh_port is None
                             else ssh_port)
    click.echo(f"Sealroom console on http://{bind_host}:{bind_port}/  (Ctrl-C stops it)")
    # SIGTERM (docker stop, systemd) ends the server as Ctrl-C does, so the close below runs:
    # it records what the console holds only in memory (refusals counted in a flood).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        waitress.serve(app, host=bind_host, port=bind_port, threads=threads, ident="sealroom")
    finally:
        if gateway is not None:
            gateway.stop()
        if exporter is not None:
            exporter.stop()
        core.close()


def _start_gateway(core: Sealroom, host: str, port: int) -> Gateway | None:
    if port == 0:
        return None
    from console.ssh.server import Gateway

    try:
        gateway = Gateway(core, host, port).start()
    except OSError as exc:
        click.echo(f"error: the SSH gateway cannot listen on {host}:{port} ({exc.strerror}); "
                   "choose another with --ssh-port (0 turns it off)", err=True)
        sys.exit(EXIT_MISCONFIGURED)
    click.echo(f"SSH gateway on {host}:{gateway.address[1]}  host key {gateway.fingerprint}")
    return gateway


def _start_metrics(core: Sealroom, bind: str) -> MetricsServer | None:
    """Prometheus metrics without a token on `bind` (host:port), if one is given."""
    if not bind:
        return None
    from console.metrics import MetricsServer

    try:
        exporter = MetricsServer(core, bind)
    except (OSError, ValueError) as exc:
        click.echo(f"error: metrics cannot be served on {bind} "
                   f"({getattr(exc, 'strerror', None) or exc})", err=True)
        sys.exit(EXIT_MISCONFIGURED)
    host, port = exporter.address
    click.echo(f"Prometheus metrics on http://{host}:{port}/metrics  (no token: keep this "
               "address private)")
    return exporter


@main.command("ssh-gateway")
@click.option("--host", default=None, help="address to bind (default SEALROOM_BIND)")
@click.option("--port", default=None, type=int, help="port (default SEALROOM_SSH_PORT or 2222)")
@click.option("--metrics-bind", default=None, metavar="HOST:PORT",
              help="also serve Prometheus metrics here, without a token: a private "
                   "interface only (default SEALROOM_METRICS_BIND; none if unset)")
def ssh_gateway(host: str | None, port: int | None, metrics_bind: str | None) -> None:
    """Serve only the SSH gateway (the console serves pages elsewhere)."""
    settings = Settings.from_env()
    os.umask(0o077)
    core = Sealroom(settings)
    gateway = _start_gateway(core, host or settings.host,
                             settings.ssh_port if port is None else port)
    if gateway is None:
        click.echo("error: --port 0 serves nothing", err=True)
        sys.exit(EXIT_MISCONFIGURED)
    try:
        exporter = _start_metrics(core, settings.metrics_bind if metrics_bind is None
                                  else metrics_bind)
    except SystemExit:
        gateway.stop()
        raise
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        core.closing.wait()
    except KeyboardInterrupt:
        pass
    finally:
        gateway.stop()
        if exporter is not None:
            exporter.stop()
        core.close()


@main.group()
def user() -> None:
    """Manage users."""


@user.command("add")
@click.argument("name")
@click.option("--role", required=True,
              type=click.Choice(["engineer", "approver", "security_officer", "auditor", "admin"]))
@_refusals
def user_add(name: str, role: str) -> None:
    """Add a user; the password is read from standard input."""
    from console.services import accounts

    password = _read_password()
    accounts.create_user(_core(), _caller(), name, role, password)
    click.echo(f"user {name} ({role}) created")


@user.command("deactivate")
@click.argument("name")
@_refusals
def user_deactivate(name: str) -> None:
    """Deactivate NAME: their sessions end and their API tokens are revoked, at once."""
    from console.services import accounts

    accounts.set_active(_core(), _caller(), name, False)
    click.echo(f"user {name} deactivated; sessions ended, API tokens revoked")


@user.command("activate")
@click.argument("name")
@_refusals
def user_activate(name: str) -> None:
    """Let deactivated user NAME log in again (old sessions and tokens stay dead)."""
    from console.services import accounts

    accounts.set_active(_core(), _caller(), name, True)
    click.echo(f"user {name} reactivated")


@user.command("password")
@click.argument("name")
@_refusals
def user_password(name: str) -> None:
    """Set NAME's password (read from standard input); their sessions end."""
    from console.services import accounts

    accounts.set_password(_core(), _caller(), name, _read_password())
    click.echo(f"password of {name} set; their sessions have ended")


def _read_password() -> str:
    if sys.stdin.isatty():
        first = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != first:
            raise click.ClickException("the passwords differ")
        return first
    return sys.stdin.readline().rstrip("\n")


@main.group()
def token() -> None:
    """Manage API tokens."""


@token.command("create")
@click.argument("user_name")
@click.option("--name", default="", help="what the token is for (e.g. laptop, ci)")
@click.option("--expires-in-days", type=int, default=None,
              help="lifetime in days (default SEALROOM_TOKEN_TTL_DAYS, at most "
                   "SEALROOM_TOKEN_MAX_DAYS)")
@_refusals
def token_create(user_name: str, name: str, expires_in_days: int | None) -> None:
    """Make an API token for USER_NAME and print it (it is shown only once)."""
    from console.services import accounts

    made = accounts.issue_token(_core(), _caller(), user_name, name=name,
                                expires_in_days=expires_in_days)
    click.echo(made.secret)
    click.echo(f"token {made.info.id} ({made.info.name}) expires {made.info.expires_at}",
               err=True)


@token.command("list")
@click.argument("user_name", required=False)
@_refusals
def token_list(user_name: str | None) -> None:
    """Every API token (or USER_NAME's): id, owner, name, state and dates; never the token."""
    from console.services import accounts

    for t in accounts.list_tokens(_core(), user_name):
        click.echo(f"{t.id:>5} {t.owner:<16} {t.name[:24]:<24} {t.prefix}… {t.state:<8} "
                   f"expires {t.expires_at[:16]}  last used {(t.last_used_at or 'never')[:16]}")


@token.command("revoke")
@click.argument("token_id", type=int)
@_refusals
def token_revoke(token_id: int) -> None:
    """Revoke token TOKEN_ID (see `token list`): it is refused from the next request on."""
    from console.services import accounts

    info = accounts.revoke_token(_core(), _caller(), token_id, any_owner=True)
    click.echo(f"token {info.id} ({info.name}) of {info.owner} revoked")


@main.group()
def dataset() -> None:
    """Manage datasets."""


@dataset.command("add")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--name", required=True)
@click.option("--allow", "allow", multiple=True,
              help="a user name, role or group:<name> (repeatable); a new version of a known "
                   "dataset keeps its grants")
@_refusals
def dataset_add(path: Path, name: str, allow: tuple[str, ...]) -> None:
    """Register the file or directory PATH as dataset NAME (or as its next version)."""
    from console.services import datasets

    core = _core()
    record = datasets.register_dataset(core, _caller(), path, name, list(allow))
    click.echo(f"dataset {record.name} version {record.version} registered: {record.files} "
               f"files, {record.size_bytes} bytes, {record.digest}")
    if record.name not in core.policy.datasets or not core.policy.datasets[record.name].allow:
        click.echo(f"note: the policy grants {record.name} to nobody yet (--allow)", err=True)


@dataset.command("list")
@_refusals
def dataset_list() -> None:
    """Every dataset and its versions."""
    from console.services import datasets

    for row in datasets.all_versions(_core()):
        state = "removed" if row.removed_at else "retired" if row.retired_at else "active"
        click.echo(f"{row.label:<32} {state:<8} {row.files:>7} files {row.size_bytes:>14,} "
                   f"bytes  {row.digest}")


@dataset.command("show")
@click.argument("name")
@click.option("--version", type=int, default=None,
              help="a version number (default: the one a launch would mount)")
@_refusals
def dataset_show(name: str, version: int | None) -> None:
    """What dataset NAME holds: description, files with sizes, columns, README (audited)."""
    from console.services import datasets

    body = datasets.version_catalog(_core(), _caller(), name, version)
    shown, catalog = body.version, body.catalog
    click.echo(f"{shown['label']}  {shown['files']} files, {shown['bytes']:,} bytes  "
               f"{shown['digest']}")
    if not catalog["available"]:
        click.echo("its files are removed (the version was retired)")
        return
    click.echo(f"description: {catalog['description'] or '(no README)'}")
    files = catalog["files"]
    assert isinstance(files, list)
    for entry in files:
        columns = f"  columns: {', '.join(entry['columns'])}" if entry["columns"] else ""
        note = f"  ({entry['note']})" if entry["note"] else ""
        click.echo(f"  {entry['path']:<40} {entry['bytes']:>14,}{columns}{note}")
    if catalog["files_not_listed"]:
        click.echo(f"  ... only the first {len(files)} files are listed")
    if catalog["readme"]:
        click.echo(f"--- {catalog['readme_file']} ---")
        click.echo(str(catalog["readme"]).rstrip("\n"))


@dataset.command("retire")
@click.argument("name")
@click.argument("version", type=int)
@_refusals
def dataset_retire(name: str, version: int) -> None:
    """Retire VERSION of dataset NAME: no new mounts; its files go once unused."""
    from console.services import datasets

    record = datasets.retire(_core(), _caller(), name, version)
    state = "its files were removed" if record.removed_at else \
        "its files go when the last running sandbox using it ends"
    click.echo(f"dataset {record.label} retired; {state}")


@main.group()
def images() -> None:
    """Build and register sandbox images."""


@images.command("build")
@click.option("--base-image", default=None,
              help="a public base to build FROM (e.g. python:3.11-slim-bookworm) "
                   "where a registry exists; default: a debootstrap base made here")
@_refusals
def images_build(base_image: str | None) -> None:
    """Build the sandbox images (skipped when the inputs are unchanged) and register them."""
    from console.services.images import register_image
    from sandbox.errors import SandboxError
    from sandbox.images import build_images

    settings = Settings.from_env()
    try:
        built = build_images(cache_dir=settings.cache_dir,
                             base_image=base_image or settings.base_image)
    except SandboxError as exc:
        click.echo(f"error: {exc.user_message}\n{exc.detail}", err=True)
        sys.exit(EXIT_UNAVAILABLE)
    core = _core()
    for name, image in built.items():
        register_image(core, _caller(), name, image.tag, image.digest)
        click.echo(f"{name}: {image.tag} {image.digest}")


@main.group()
def key() -> None:
    """The release gate's signing key."""


@key.command("rotate")
@_refusals
def key_rotate() -> None:
    """Make a new gate key; bundles signed before stay verifiable with the old public key."""
    from sandbox.gate.keys import passphrase_from_env

    core = _core()
    old = core.gate_key().key.keyid
    new = core.key_ring.rotate(passphrase_from_env(os.environ, core.settings.home))
    core.record(_caller().actor, AuditAction.KEY_ROTATE, target="key:release",
                retired=old, active=new.keyid)
    click.echo(f"release gate key rotated: {old[:16]} retired, {new.keyid[:16]} active")


@main.group()
def demo() -> None:
    """Demo data."""


@demo.command("seed")
@_refusals
def demo_seed() -> None:
    """Create one demo user per role and the demo dataset (once), and print the logins."""
    from sqlmodel import select

    from console.models import Dataset, User
    from console.services import accounts, datasets
    from sandbox.examples.demo_dataset import write_demo_dataset

    core = _core()
    logins = core.settings.home / "demo-logins.txt"
    known = dict(line.split(" ", 2)[::2] for line in logins.read_text().splitlines()) \
        if logins.exists() else {}
    with core.read() as session:
        existing = {u.name for u in session.exec(select(User)).all()}
        has_dataset = session.exec(select(Dataset).where(Dataset.name == "demo")).first()
    lines = []
    for name, role in DEMO_USERS:
        password = known.get(name)
        if name not in existing:
            password = secrets.token_urlsafe(9)
            accounts.create_user(core, _caller(), name, role, password)
        lines.append(f"{name} {role} {password or '(set before this demo file existed)'}")
    logins.write_text("\n".join(lines) + "\n")
    logins.chmod(0o600)
    if not has_dataset:
        with tempfile.TemporaryDirectory() as tmp:
            write_demo_dataset(Path(tmp))
            datasets.register_dataset(core, _caller(), Path(tmp), "demo", ["role:engineer"])
    _demo_terminals(core)
    click.echo("Demo logins (also in " + str(logins) + "):")
    for line in lines:
        name, role, password = line.split(" ", 2)
        click.echo(f"  {name:<8} {role:<17} {password}")
    click.echo(f"Terminals: alice adds a public key on her account page, launches a sandbox, "
               f"then: ssh -p {core.settings.ssh_port} alice@{core.settings.host}")


_DEMO_TERMINALS = "demo: engineers may open terminals in their sandboxes"


def _demo_terminals(core: Sealroom) -> None:
    """The shipped policy keeps the SSH gateway shut; the demo opens it, once, as a new
    policy version."""
    import re

    from sqlmodel import select

    from console.models import PolicyVersion
    from console.services import policy as policy_service

    with core.read() as session:
        if session.exec(select(PolicyVersion.version).where(
                PolicyVersion.reason == _DEMO_TERMINALS)).first() is not None:
            return  # opened once; an officer's later choice stands
    active = policy_service.active_version(core)
    # A one-line edit keeps the shipped document's comments for the officer to read.
    text, found = re.subn(r"(?m)^(interactive:\n  ssh: )false", r"\1true", active.text)
    if found == 1:
        policy_service.activate(core, _caller(), text, _DEMO_TERMINALS)


main.add_command(release)
main.add_command(audit)
main.add_command(policy)
main.add_command(sandbox)
main.add_command(project)
main.add_command(ssh_key)

if __name__ == "__main__":
    main()
