"""How an engineer finds their way into a terminal: the sandbox page's Terminal section, the
API's /sandboxes/<id>/terminal and `sealroom sandbox ssh`. Everything shown there is text
the console composed (commands, the host key's fingerprint, counts, its own reasons); no
sandbox-written byte is shown, so nothing spends the disclosure budget."""

from __future__ import annotations

from typing import Any

from click.testing import CliRunner
from flask import Flask

from console.cli import main
from console.core import Sealroom
from console.services import disclosure
from console.ssh.host_key import fingerprint, load_or_create
from tests.helpers import bearer, change_policy, launch_example, login

SEALROOM_URL = "SEALROOM_URL"


def test_the_page_and_the_api_show_the_command_and_the_host_key(
        app: Flask, core: Sealroom, alice: str) -> None:
    change_policy(core, {"interactive": {"ssh": True}})
    host_key = fingerprint(load_or_create(core.settings.ssh_host_key))
    client = app.test_client()
    sandbox_id = launch_example(client, alice)
    facts = client.get(f"/api/v1/sandboxes/{sandbox_id}/terminal",
                       headers=bearer(alice)).get_json()
    assert facts["allowed"] and facts["running"]
    assert facts["command"] == f"ssh -p 2222 alice+{sandbox_id}@localhost"
    assert facts["host_key"] == host_key and facts["key_count"] == 0
    login(client, "alice")
    page = client.get(f"/sandboxes/{sandbox_id}").get_data(as_text=True)
    assert f"ssh -p 2222 alice+{sandbox_id}@localhost" in page and host_key in page
    assert "You have no SSH key yet" in page
    with core.read() as session:  # console-composed: nothing was charged to the ledger
        assert disclosure.sandbox_total(session, sandbox_id) == 0


def test_the_page_says_why_there_is_no_terminal(app: Flask, core: Sealroom,
                                               alice: str) -> None:
    client = app.test_client()
    sandbox_id = launch_example(client, alice)  # the shipped policy keeps the gateway shut
    login(client, "alice")
    page = client.get(f"/sandboxes/{sandbox_id}").get_data(as_text=True)
    assert "No terminal: SSH access is turned off (policy rule interactive.ssh)" in page
    facts = client.get(f"/api/v1/sandboxes/{sandbox_id}/terminal",
                       headers=bearer(alice)).get_json()
    assert not facts["allowed"] and facts["rule"] == "interactive.ssh"


def _cli(served: str, token: str, *args: str) -> Any:
    return CliRunner().invoke(main, ["sandbox", "ssh", *args],
                              env={SEALROOM_URL: served, "SEALROOM_TOKEN": token})


def test_the_cli_prints_the_command_or_says_why_not(served: str, app: Flask, core: Sealroom,
                                                    alice: str) -> None:
    sandbox_id = launch_example(app.test_client(), alice)
    refused = _cli(served, alice, sandbox_id, "--print")
    assert refused.exit_code == 1
    assert "no terminal: SSH access is turned off (rule interactive.ssh)" in refused.output
    change_policy(core, {"interactive": {"ssh": True}})
    shown = _cli(served, alice, sandbox_id, "--print")
    assert shown.exit_code == 0, shown.output
    assert f"ssh -p 2222 alice+{sandbox_id}@127.0.0.1" in shown.output
    no_rank = _cli(served, alice, sandbox_id, "--rank", "3", "--print")
    assert no_rank.exit_code == 1 and "has no rank 3" in no_rank.output
