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
    # The demo opens the SSH gateway once, as its own policy version, comments kept.
    core = _core(tmp_path)
    assert core.policy.interactive.ssh and core.policy.version == 3
    assert "ssh -p 2222 alice@127.0.0.1" in first.output
    shown = cli.invoke(main, ["policy", "show"]).output
    assert "ssh: true                 # SSH into one's own running sandbox" in shown


def test_dataset_add_activates_a_policy_version_with_its_access_list(cli: CliRunner,
                                                                      tmp_path: Path) -> None:
    source = tmp_path / "data"
    source.mkdir()
    (source / "train.csv").write_text("f0,label\n1,0\n")
    assert cli.invoke(main, ["dataset", "add", str(source), "--name", "tiny",
                             "--allow", "engineer"]).exit_code == 0
    core = _core(tmp_path)
    assert core.policy.version == 2
    assert core.policy.datasets["tiny"].allow == ["role:engineer"]
    shown = cli.invoke(main, ["policy", "show"])
    assert shown.exit_code == 0
    assert "# policy version 2, active" in shown.output
    assert "dataset tiny registered" in shown.output and "# Sealroom default policy" in shown.output


def test_policy_validate_activate_show(cli: CliRunner, tmp_path: Path) -> None:
    shown = cli.invoke(main, ["policy", "show"])
    assert shown.exit_code == 0 and "# policy version 1, active" in shown.output
    document = tmp_path / "policy.yaml"
    text = shown.output.replace("max_cpus: 2.0", "max_cpus: 1.5")
    document.write_text(text)  # the header lines are comments: show's output validates
    valid = cli.invoke(main, ["policy", "validate", str(document)])
    assert valid.exit_code == 0, valid.output
    assert f"{document}: valid" in valid.output
    assert "approvals are needed but only 0 approver(s)" in valid.output  # a warning

    broken = tmp_path / "broken.yaml"
    broken.write_text(text.replace("  leak_scan: true", "  leak_scan: true\n  leek: 1"))
    line = next(n for n, row in enumerate(broken.read_text().splitlines(), 1) if "leek" in row)
    refused = cli.invoke(main, ["policy", "validate", str(broken)])
    assert refused.exit_code == 1
    assert f"{broken}:{line}: release.leek: unknown field 'leek'" in refused.output
    not_activated = cli.invoke(main, ["policy", "activate", str(broken), "--reason", "x"])
    assert not_activated.exit_code == 1 and _core(tmp_path).policy.version == 1
    assert cli.invoke(main, ["policy", "activate", str(document)]).exit_code == 2  # no reason
    refused_dry = cli.invoke(main, ["policy", "dry-run", str(broken)])
    assert refused_dry.exit_code == 1 and "release.leek" in refused_dry.output

    dry = cli.invoke(main, ["policy", "dry-run", str(document)])
    assert dry.exit_code == 0, dry.output
    assert "--- version 1 (active)\n+++ version 2 (this dry run)" in dry.output
    changed = [line for line in dry.output.splitlines() if "max_cpus" in line]
    assert [line.replace(" ", "") for line in changed] == ["-max_cpus:2.0", "+max_cpus:1.5"]
    assert "# would become policy version 2" in dry.output
    assert _core(tmp_path).policy.version == 1  # a dry run activates nothing

    activated = cli.invoke(main, ["policy", "activate", str(document), "--reason", "smaller"])
    assert activated.exit_code == 0, activated.output
    assert "policy version 2 is active" in activated.output
    assert _core(tmp_path).policy.resources.for_role("engineer").max_cpus == 1.5
    old = cli.invoke(main, ["policy", "show", "--version", "1"])
    assert "# policy version 1, not active (version 2 is)" in old.output
    assert cli.invoke(main, ["policy", "show", "--version", "7"]).exit_code == 1
    restored = cli.invoke(main, ["policy", "restore", "1", "--reason", "undo"])
    assert restored.exit_code == 0 and "policy version 3 is active" in restored.output
    with _core(tmp_path).transaction() as session:
        event = session.exec(select(AuditEvent).where(
            AuditEvent.action == "policy:policy:restore")).one()
        assert event.actor.startswith("cli:") and event.reason == "undo"


def test_images_build_registers_every_built_image(cli: CliRunner, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from console.models import Image
    from console.services.images import current_image
    from sandbox import images

    built = {name: images.BuiltImage(name, f"sealroom/{name}:{tag}", digest, digest)
             for name, tag, digest in [("base", "0" * 12, "sha256:" + "a" * 64),
                                       ("horovod", "1" * 12, "sha256:" + "b" * 64)]}
    monkeypatch.setattr(images, "build_images", lambda **kwargs: built)

    for _ in range(2):  # a second build of the same images registers nothing new
        result = cli.invoke(main, ["images", "build"])
        assert result.exit_code == 0, result.output
    assert "horovod: sealroom/horovod:111111111111" in result.output
    core = _core(tmp_path)
    horovod = current_image(core, "horovod")
    assert horovod is not None and horovod.digest == "sha256:" + "b" * 64
    with core.transaction() as session:
        assert {i.name for i in session.exec(select(Image)).all()} == {"base", "horovod"}
        events = session.exec(select(AuditEvent)
                              .where(AuditEvent.action == "system:image:register")).all()
    assert sorted(e.target for e in events) == ["image:base", "image:horovod"]
