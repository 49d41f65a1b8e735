"""`sealroom token create/list/revoke` and `sealroom user deactivate/activate/password`:
what they print, what they refuse, and that a revoked token or a deactivated user is refused
on the next request."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from console.cli import main
from console.core import Sealroom
from console.services import accounts
from console.settings import Settings


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("SEALROOM_HOME", str(tmp_path / "home"))
    runner = CliRunner()
    assert runner.invoke(main, ["user", "add", "alice", "--role", "engineer"],
                         input="a long password\n").exit_code == 0
    return runner


@pytest.fixture
def core(tmp_path: Path, cli: CliRunner) -> Iterator[Sealroom]:
    sealroom = Sealroom(Settings.from_env(home=tmp_path / "home"),
                        backend=object())  # type: ignore[arg-type]
    yield sealroom
    sealroom.close()


def _stdout_token(output: str) -> str:
    return next(line for line in output.splitlines() if line.startswith("sr_"))


def test_token_create_list_revoke(cli: CliRunner, core: Sealroom) -> None:
    made = cli.invoke(main, ["token", "create", "alice", "--name", "ci",
                             "--expires-in-days", "7"])
    assert made.exit_code == 0, made.output
    token = _stdout_token(made.output)
    [info] = accounts.list_tokens(core, "alice")
    assert info.name == "ci" and "expires" in made.output
    assert accounts.user_for_token(core, token) is not None

    listed = cli.invoke(main, ["token", "list", "alice"])
    assert listed.exit_code == 0 and "ci" in listed.output and "active" in listed.output
    assert token not in listed.output

    revoked = cli.invoke(main, ["token", "revoke", str(info.id)])
    assert revoked.exit_code == 0 and "revoked" in revoked.output
    assert accounts.user_for_token(core, token) is None
    assert "revoked" in cli.invoke(main, ["token", "list"]).output
    again = cli.invoke(main, ["token", "revoke", str(info.id)])
    assert again.exit_code == 1 and "already revoked" in again.output
    assert cli.invoke(main, ["token", "revoke", "999"]).exit_code == 1


def test_token_create_refuses_a_lifetime_out_of_bounds(cli: CliRunner, core: Sealroom) -> None:
    for days in ("0", "366"):
        refused = cli.invoke(main, ["token", "create", "alice", "--expires-in-days", days])
        assert refused.exit_code == 1 and "from 1 to 365" in refused.output
    assert accounts.list_tokens(core, "alice") == []


def test_user_deactivate_and_activate(cli: CliRunner, core: Sealroom) -> None:
    token = _stdout_token(cli.invoke(main, ["token", "create", "alice"]).output)
    done = cli.invoke(main, ["user", "deactivate", "alice"])
    assert done.exit_code == 0 and "deactivated" in done.output
    assert accounts.user_for_token(core, token) is None
    assert cli.invoke(main, ["user", "deactivate", "alice"]).exit_code == 1
    assert cli.invoke(main, ["token", "create", "alice"]).exit_code == 1
    assert cli.invoke(main, ["user", "activate", "alice"]).exit_code == 0
    assert accounts.user_for_token(core, token) is None  # old tokens stay revoked
    assert cli.invoke(main, ["user", "activate", "nobody"]).exit_code == 1


def test_user_password(cli: CliRunner, core: Sealroom) -> None:
    from tests.helpers import OPERATOR

    assert cli.invoke(main, ["user", "password", "alice"],
                      input="another long one\n").exit_code == 0
    assert accounts.authenticate(core, OPERATOR, "alice", "a long password") is None
    assert accounts.authenticate(core, OPERATOR, "alice", "another long one") is not None
    short = cli.invoke(main, ["user", "password", "alice"], input="short\n")
    assert short.exit_code == 1 and "at least" in short.output
