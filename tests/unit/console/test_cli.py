"""The `sealroom` CLI: users, tokens, datasets, demo seeding; clear messages and exit codes."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlmodel import select

from audit.models import AuditEvent
from console.cli import main
from console.core import Sealroom
from console.models import Dataset, User
from console.settings import Settings


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("SEALROOM_HOME", str(tmp_path / "home"))
    return CliRunner()


def _core(tmp_path: Path) -> Sealroom:
    return Sealroom(Settings.from_env(home=tmp_path / "home"), backend=object())  # type: ignore[arg-type]


def test_user_add_reads_the_password_from_stdin(cli: CliRunner, tmp_path: Path) -> None:
    result = cli.invoke(main, ["user", "add", "alice", "--role", "engineer"],
                        input="a long password\n")
    assert result.exit_code == 0, result.output
    with _core(tmp_path).transaction() as session:
        user = session.exec(select(User).where(User.name == "alice")).one()
        assert user.role == "engineer" and "a long password" not in user.password_hash
        event = session.exec(select(AuditEvent)
                             .where(AuditEvent.action == "admin:user:create")).one()
        assert event.actor.startswith("cli:") and event.auth_method == "cli"


def test_user_add_refusals(cli: CliRunner) -> None:
    assert cli.invoke(main, ["user", "add", "alice", "--role", "engineer"],
                      input="a long password\n").exit_code == 0
    again = cli.invoke(main, ["user", "add", "alice", "--role", "engineer"],
                       input="a long password\n")
    assert again.exit_code == 1 and "already exists" in again.output
    short = cli.invoke(main, ["user", "add", "bob", "--role", "engineer"], input="short\n")
    assert short.exit_code == 1 and "at least" in short.output
    bad_role = cli.invoke(main, ["user", "add", "bob", "--role", "wizard"], input="x\n")
    assert bad_role.exit_code == 2


def test_token_create(cli: CliRunner) -> None:
    cli.invoke(main, ["user", "add", "alice", "--role", "engineer"], input="a long password\n")
    result = cli.invoke(main, ["token", "create", "alice"])
    assert result.exit_code == 0 and result.output.startswith("sr_")
    missing = cli.invoke(main, ["token", "create", "nobody"])
    assert missing.exit_code == 1 and "no user" in missing.output


def test_dataset_add(cli: CliRunner, tmp_path: Path) -> None:
    source = tmp_path / "data"
    source.mkdir()
    (source / "train.csv").write_text("f0,label\n1,0\n")
    result = cli.invoke(main, ["dataset", "add", str(source), "--name", "tiny",
                               "--allow", "engineer"])
    assert result.exit_code == 0, result.output
    with _core(tmp_path).transaction() as session:
        dataset = session.exec(select(Dataset)).one()
    stored = Path(dataset.path)
    assert stored.is_relative_to(tmp_path / "home" / "datasets")
    assert (stored / "train.csv").read_text() == "f0,label\n1,0\n"
    assert not (stored / "train.csv").stat().st_mode & 0o222  # read-only copy
    assert dataset.digest.startswith("sha256:")
    unknown = cli.invoke(main, ["dataset", "add", str(source), "--name", "other",
                                "--allow", "nobody"])
    assert unknown.exit_code == 1 and "neither a user nor a role" in unknown.output
    with _core(tmp_path).transaction() as session:
        assert len(session.exec(select(Dataset)).all()) == 1
        denied = session.exec(select(AuditEvent).where(AuditEvent.outcome == "denied")).all()
        assert denied[-1].action == "admin:dataset:register"
    assert len(list((tmp_path / "home" / "datasets").iterdir())) == 1


def test_demo_seed_is_idempotent(cli: CliRunner, tmp_path: Path) -> None:
    first = cli.invoke(main, ["demo", "seed"])
    assert first.exit_code == 0, first.output
    assert "alice" in first.output and "engineer" in first.output
    second = cli.invoke(main, ["demo", "seed"])
    assert second.exit_code == 0
    assert first.output == second.output  # same logins printed again
    with _core(tmp_path).transaction() as session:
        assert len(session.exec(select(User)).all()) == 6
        (dataset,) = session.exec(select(Dataset)).all()
        assert dataset.name == "demo"
    assert oct((tmp_path / "home" / "demo-logins.txt").stat().st_mode)[-3:] == "600"
