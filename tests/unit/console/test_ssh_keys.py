"""Users' SSH public keys for the gateway: each accepted type added with the fingerprint the
real `ssh-keygen -lf` prints, each refusal audited with nothing stored, removal (one's own
only), the gateway's look-up (a deactivated user's key opens nothing), and the same through
the API, the account page (CSRF included) and `sealroom ssh-key` over real HTTP."""

from __future__ import annotations

import base64
import dataclasses
import json
import shutil
import struct
import subprocess
import warnings
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paramiko
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519
from flask import Flask
from flask.testing import FlaskClient
from sqlmodel import func, select

from audit.events import Actor
from console.app import create_app
from console.cli import main
from console.core import Caller, Sealroom
from console.models import SshKey, User
from console.services import accounts, ssh_keys
from console.services.errors import BadRequest, Conflict, Forbidden, NotFound, ServiceError
from tests.helpers import OPERATOR, PASSWORD, bearer, csrf_from, login, recorded

MakeUser = Callable[..., tuple[str, str]]
ADD, REMOVE = "account:ssh_key:add", "account:ssh_key:remove"

pytestmark = pytest.mark.skipif(shutil.which("ssh-keygen") is None,
                                reason="needs OpenSSH's ssh-keygen (Debian openssh-client)")


# --- keys, made by the real ssh-keygen once per module ---------------------------------------


@dataclasses.dataclass(frozen=True)
class KeyFile:
    private: Path
    public: Path

    @property
    def line(self) -> str:
        return self.public.read_text().strip()

    def keygen_fingerprint(self) -> str:
        """What `ssh-keygen -lf` prints for it: "BITS SHA256:... COMMENT (TYPE)"."""
        out = subprocess.run(["ssh-keygen", "-lf", str(self.public)], check=True,
                             capture_output=True, text=True).stdout
        return out.split()[1]


def _keygen(directory: Path, name: str, *args: str, comment: str = "") -> KeyFile:
    private = directory / name
    subprocess.run(["ssh-keygen", "-q", *args, "-f", str(private), "-N", "",
                    "-C", comment or f"{name}@laptop"], check=True, capture_output=True)
    return KeyFile(private, private.with_name(name + ".pub"))


ACCEPTED = {
    "ed25519": (("-t", "ed25519"), "ssh-ed25519", 256),
    "ecdsa256": (("-t", "ecdsa", "-b", "256"), "ecdsa-sha2-nistp256", 256),
    "ecdsa384": (("-t", "ecdsa", "-b", "384"), "ecdsa-sha2-nistp384", 384),
    "ecdsa521": (("-t", "ecdsa", "-b", "521"), "ecdsa-sha2-nistp521", 521),
    "rsa3072": (("-t", "rsa", "-b", "3072"), "ssh-rsa", 3072),
}


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, KeyFile]:
    directory = tmp_path_factory.mktemp("ssh")
    made = {name: _keygen(directory, name, *args) for name, (args, _, _) in ACCEPTED.items()}
    made["rsa2048"] = _keygen(directory, "rsa2048", "-t", "rsa", "-b", "2048")
    for extra in ("second", "third"):
        made[extra] = _keygen(directory, extra, "-t", "ed25519")
    return made


def _ssh_string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _security_key_line(kind: str) -> str:
    """An sk-* public key line as a FIDO token's ssh-keygen writes it (no token here)."""
    if kind == "sk-ssh-ed25519@openssh.com":
        point = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        blob = _ssh_string(kind.encode()) + _ssh_string(point)
    else:
        point = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
        blob = _ssh_string(kind.encode()) + _ssh_string(b"nistp256") + _ssh_string(point)
    blob += _ssh_string(b"ssh:")
    return f"{kind} {base64.b64encode(blob).decode()} me@yubikey"


def _dsa_line() -> str:
    with warnings.catch_warnings():  # cryptography deprecates SSH DSA: that is the point
        warnings.simplefilter("ignore")
        key = dsa.generate_private_key(1024).public_key()
        return key.public_bytes(serialization.Encoding.OpenSSH,
                                serialization.PublicFormat.OpenSSH).decode() + " old@box"


# --- people ---------------------------------------------------------------------------------


@pytest.fixture
def alice(make_user: MakeUser) -> str:
    return make_user("alice")[1]


@pytest.fixture
def bob(make_user: MakeUser) -> str:
    return make_user("bob")[1]


def _as(core: Sealroom, name: str) -> Caller:
    with core.read() as session:
        user = session.exec(select(User).where(User.name == name)).one()
    return Caller(Actor(name, user.role, "session", "127.0.0.1"), user_id=user.id,
                  request_id=f"test-{name}")


def _stored(core: Sealroom) -> int:
    with core.read() as session:
        return int(session.exec(select(func.count()).select_from(SshKey)).one())


def _events(core: Sealroom, action: str, outcome: str) -> list[Any]:
    return [e for e in recorded(core, action) if e.outcome == outcome]


# --- the service ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(ACCEPTED))
def test_each_accepted_type_is_added_with_ssh_keygens_fingerprint(
        core: Sealroom, alice: str, keys: dict[str, KeyFile], kind: str) -> None:
    key = keys[kind]
    added = ssh_keys.add(core, _as(core, "alice"), key.line + "\n")
    _, algorithm, bits = ACCEPTED[kind]
    assert added["fingerprint"] == key.keygen_fingerprint()
    assert (added["algorithm"], added["bits"], added["name"]) == (algorithm, bits,
                                                                 f"{kind}@laptop")
    assert ssh_keys.list_mine(core, _as(core, "alice")) == [added]
    with core.read() as session:
        row = session.get(SshKey, added["id"])
    assert row is not None and row.public_key == " ".join(key.line.split()[:2])
    [event] = recorded(core, ADD)
    assert (event.actor, event.target, event.outcome) == ("alice", "user:alice", "ok")
    assert key.keygen_fingerprint() in event.details
    found = ssh_keys.key_for_login(core, key.keygen_fingerprint())
    assert found is not None and found[0].name == "alice" and found[1].id == added["id"]
    # the gateway holds a paramiko key: its blob and its own fingerprint give the same
    kind_name, encoded = key.line.split()[:2]
    offered = paramiko.PKey.from_type_string(kind_name, base64.b64decode(encoded))
    assert ssh_keys.fingerprint(offered.asbytes()) == offered.fingerprint == added["fingerprint"]


REFUSALS: list[tuple[str, Callable[[dict[str, KeyFile]], str], str]] = [
    ("dsa", lambda k: _dsa_line(), "DSA keys are not accepted"),
    ("rsa2048", lambda k: k["rsa2048"].line,
     "RSA keys must have at least 3072 bits; this one has 2048"),
    ("sk-ed25519", lambda k: _security_key_line("sk-ssh-ed25519@openssh.com"),
     "paramiko does not support them"),
    ("sk-ecdsa", lambda k: _security_key_line("sk-ecdsa-sha2-nistp256@openssh.com"),
     "security-key (FIDO)"),
    ("private", lambda k: k["ed25519"].private.read_text(),
     "this is a PRIVATE key; paste the .pub file"),
    ("pem-private", lambda k: "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n", "PRIVATE key"),
    ("garbage", lambda k: "hello there", "not an OpenSSH public key"),
    ("bad-base64", lambda k: "ssh-ed25519 AAAA%%%% me", "damaged or incomplete"),
    ("truncated", lambda k: k["ed25519"].line[:40], "damaged or incomplete"),
    ("empty", lambda k: "  \n ", "paste a public key"),
    ("several", lambda k: k["ed25519"].line + "\n" + k["second"].line, "one key at a time"),
    ("type-swapped", lambda k: "ssh-rsa " + k["ed25519"].line.split()[1],
     "the line says ssh-rsa, but the key itself is ssh-ed25519"),
    ("unknown-type", lambda k: "ssh-foo AAAAB3NzaC1yc2EAAAADAQABAAABAQ me",
     "not a key type the gateway accepts"),
    ("options", lambda k: 'command="sh" ' + k["ed25519"].line, "not an OpenSSH public key"),
    ("certificate", lambda k: "ssh-ed25519-cert-v01@openssh.com AAAA me",
     "certificates are not accepted"),
    ("ssh2-format", lambda k: "---- BEGIN SSH2 PUBLIC KEY ----\nAAAA\n---- END SSH2 PUBLIC "
     "KEY ----", "ssh-keygen -i"),
    ("huge", lambda k: "ssh-rsa " + "A" * 20000, "a single line"),
]


def test_refusals_are_clear_audited_and_store_nothing(core: Sealroom, alice: str,
                                                     keys: dict[str, KeyFile]) -> None:
    # One installation for every case (each is its own audited refusal): a fresh one per
    # case would cost seconds apiece on a shared machine.
    for case, text_of, message in REFUSALS:
        with pytest.raises(BadRequest) as refused:
            ssh_keys.add(core, _as(core, "alice"), text_of(keys), "laptop")
        assert message in refused.value.message, case
        assert _stored(core) == 0, case
        event = recorded(core, ADD)[-1]
        assert (event.actor, event.target, event.outcome) == ("alice", "user:alice",
                                                              "denied"), case
        assert message in event.reason, case
    assert len(recorded(core, ADD)) == len(REFUSALS)


def test_a_registered_key_is_refused_to_anyone_without_saying_whose(
        core: Sealroom, alice: str, bob: str, keys: dict[str, KeyFile]) -> None:
    line = keys["ed25519"].line
    ssh_keys.add(core, _as(core, "alice"), line)
    for who in ("bob", "alice"):
        with pytest.raises(Conflict) as refused:
            ssh_keys.add(core, _as(core, who), line, "mine now")
        assert refused.value.status == 409 and "already registered" in refused.value.message
        assert "alice" not in refused.value.message
    assert _stored(core) == 1
    denied = _events(core, ADD, "denied")
    assert [e.actor for e in denied] == ["bob", "alice"]
    assert "of alice" in denied[0].details  # the auditor is told whose; bob is not


def test_names_default_to_the_comment_and_refuse_control_characters(
        core: Sealroom, alice: str, keys: dict[str, KeyFile]) -> None:
    me = _as(core, "alice")
    bare = " ".join(keys["second"].line.split()[:2])  # no comment
    assert ssh_keys.add(core, me, bare)["name"] == "key 1"
    assert ssh_keys.add(core, me, keys["third"].line, "  work laptop ")["name"] == \
        "work laptop"
    for bad, message in (("tab\there", "control characters"), ("x" * 65, "at most 64")):
        with pytest.raises(BadRequest, match=message):
            ssh_keys.add(core, me, keys["ed25519"].line, bad)
    assert _stored(core) == 2 and len(_events(core, ADD, "denied")) == 2
    # a comment that cannot be a name is not one
    long_comment = " ".join(keys["ed25519"].line.split()[:2]) + " " + "c" * 80
    assert ssh_keys.add(core, me, long_comment)["name"] == "key 3"


def test_removing_a_key_stops_it_at_once_and_only_its_owner_may(
        core: Sealroom, alice: str, bob: str, keys: dict[str, KeyFile]) -> None:
    key = keys["ed25519"]
    added = ssh_keys.add(core, _as(core, "alice"), key.line)
    for who, key_id in (("bob", added["id"]), ("alice", 999)):
        with pytest.raises(NotFound, match=f"no SSH key {key_id}"):
            ssh_keys.remove(core, _as(core, who), key_id)
    assert ssh_keys.key_for_login(core, added["fingerprint"]) is not None
    assert [e.actor for e in _events(core, REMOVE, "denied")] == ["bob", "alice"]

    removed = ssh_keys.remove(core, _as(core, "alice"), added["id"])
    assert removed["fingerprint"] == added["fingerprint"]
    assert ssh_keys.key_for_login(core, added["fingerprint"]) is None
    assert ssh_keys.list_mine(core, _as(core, "alice")) == []
    [event] = _events(core, REMOVE, "ok")
    assert (event.actor, event.target) == ("alice", f"ssh_key:{added['id']}")
    with core.read() as session:  # the row stays: sessions name its fingerprint
        row = session.get(SshKey, added["id"])
    assert row is not None and row.removed_at is not None
    with pytest.raises(NotFound):
        ssh_keys.remove(core, _as(core, "alice"), added["id"])
    # someone else may still not take it; its owner may add it again
    with pytest.raises(Conflict):
        ssh_keys.add(core, _as(core, "bob"), key.line)
    again = ssh_keys.add(core, _as(core, "alice"), key.line, "back")
    assert (again["id"], again["name"]) == (added["id"], "back")
    assert ssh_keys.key_for_login(core, added["fingerprint"]) is not None


def test_a_deactivated_users_key_opens_nothing(core: Sealroom, alice: str, make_user: MakeUser,
                                              keys: dict[str, KeyFile]) -> None:
    make_user("root", "admin")
    added = ssh_keys.add(core, _as(core, "alice"), keys["ed25519"].line)
    assert ssh_keys.key_for_login(core, added["fingerprint"]) is not None
    accounts.set_active(core, _as(core, "root"), "alice", False)
    assert ssh_keys.key_for_login(core, added["fingerprint"]) is None
    with pytest.raises(Forbidden, match="deactivated"):
        ssh_keys.add(core, _as(core, "alice"), keys["second"].line)
    assert ssh_keys.key_for_login(core, keys["third"].keygen_fingerprint()) is None  # unknown


def test_touch_notes_the_last_use_at_most_once_a_minute(core: Sealroom, alice: str,
                                                         keys: dict[str, KeyFile]) -> None:
    added = ssh_keys.add(core, _as(core, "alice"), keys["ed25519"].line)

    def last_used() -> str | None:
        with core.read() as session:
            row = session.get(SshKey, added["id"])
            assert row is not None
            return row.last_used_at

    assert last_used() is None
    ssh_keys.touch(core, added["id"])
    first = last_used()
    assert first is not None
    ssh_keys.touch(core, added["id"])
    assert last_used() == first
    # as if two minutes had passed since
    earlier = (datetime.now(UTC) - timedelta(minutes=2)).isoformat().replace("+00:00", "Z")
    with core.transaction() as session:
        row = session.get(SshKey, added["id"])
        assert row is not None
        row.last_used_at = earlier
        session.add(row)
    ssh_keys.touch(core, added["id"])
    assert (last_used() or "") > earlier
    ssh_keys.touch(core, 999)  # an unknown key: nothing to note
    assert ssh_keys.list_mine(core, _as(core, "alice"))[0]["last_used_at"] == last_used()


def test_an_admin_revokes_anyones_key_and_an_engineer_does_not(
        core: Sealroom, alice: str, bob: str, make_user: MakeUser,
        keys: dict[str, KeyFile]) -> None:
    make_user("root", "admin")
    added = ssh_keys.add(core, _as(core, "alice"), keys["ed25519"].line)
    with pytest.raises(Forbidden):
        ssh_keys.revoke(core, _as(core, "bob"), added["id"])
    assert ssh_keys.key_for_login(core, added["fingerprint"]) is not None
    assert [k["owner"] for k in ssh_keys.list_all(core)] == ["alice"]
    ssh_keys.revoke(core, _as(core, "root"), added["id"])
    assert ssh_keys.key_for_login(core, added["fingerprint"]) is None
    assert ssh_keys.list_all(core) == []
    [event] = _events(core, REMOVE, "ok")
    assert event.actor == "root" and json.loads(event.details)["by"] == "admin"
    # a key revoked as leaked does not come back, not even by its owner
    with pytest.raises(Conflict, match="an administrator removed this key"):
        ssh_keys.add(core, _as(core, "alice"), keys["ed25519"].line)
    assert ssh_keys.key_for_login(core, added["fingerprint"]) is None


def test_an_admin_removes_keys_on_the_admin_page(app: Flask, core: Sealroom, alice: str,
                                                 make_user: MakeUser,
                                                 keys: dict[str, KeyFile]) -> None:
    make_user("root", "admin")
    added = ssh_keys.add(core, _as(core, "alice"), keys["ed25519"].line)
    root = _logged_in(app, "root")
    page = root.get("/admin/tokens").get_data(as_text=True)
    assert f'id="ssh-key-{added["id"]}"' in page and added["fingerprint"] in page
    done = root.post(f"/admin/ssh-keys/{added['id']}/revoke",
                     data={"csrf_token": csrf_from(root, "/admin/tokens")})
    assert done.status_code == 303
    assert ssh_keys.key_for_login(core, added["fingerprint"]) is None
    assert 'id="ssh-keys-none"' in root.get("/admin/tokens").get_data(as_text=True)
    # an engineer may not use the admin form
    alice_session = _logged_in(app, "alice")
    assert alice_session.post(f"/admin/ssh-keys/{added['id']}/revoke",
                              data={"csrf_token": csrf_from(alice_session, "/account")}
                              ).status_code == 403


def test_the_host_key_fingerprint_is_ssh_keygens(tmp_path: Path,
                                                 keys: dict[str, KeyFile]) -> None:
    host = _keygen(tmp_path, "ssh_host_ed25519_key", "-t", "ed25519", comment="host")
    assert ssh_keys.host_key_fingerprint(host.private) == host.keygen_fingerprint()
    assert ssh_keys.host_key_fingerprint(tmp_path / "absent") is None
    assert ssh_keys.host_key_fingerprint(host.public) is None  # not a private key file


# --- the API --------------------------------------------------------------------------------


def test_the_api_adds_lists_and_removes_ones_own_keys(
        client: FlaskClient, core: Sealroom, alice: str, bob: str,
        keys: dict[str, KeyFile]) -> None:
    made = client.post("/api/v1/ssh-keys", headers=bearer(alice),
                       json={"public_key": keys["ed25519"].line, "name": "laptop"})
    assert made.status_code == 201
    key = made.get_json()
    assert made.headers["Location"] == f"/api/v1/ssh-keys/{key['id']}"
    assert (key["name"], key["fingerprint"]) == ("laptop", keys["ed25519"].keygen_fingerprint())
    listed = client.get("/api/v1/ssh-keys", headers=bearer(alice)).get_json()["ssh_keys"]
    assert listed == [key]
    assert client.get("/api/v1/ssh-keys", headers=bearer(bob)).get_json() == {"ssh_keys": []}

    taken = client.post("/api/v1/ssh-keys", headers=bearer(bob),
                        json={"public_key": keys["ed25519"].line})
    assert taken.status_code == 409 and "alice" not in taken.get_data(as_text=True)
    assert client.delete(f"/api/v1/ssh-keys/{key['id']}", headers=bearer(bob)).status_code == 404
    gone = client.delete(f"/api/v1/ssh-keys/{key['id']}", headers=bearer(alice))
    assert gone.status_code == 200 and gone.get_json()["id"] == key["id"]
    assert client.get("/api/v1/ssh-keys", headers=bearer(alice)).get_json() == {"ssh_keys": []}
    assert client.delete(f"/api/v1/ssh-keys/{key['id']}",
                         headers=bearer(alice)).status_code == 404


BAD_BODIES: list[tuple[Any, str]] = [
    ({"public_key": "ssh-dss AAAA"}, "DSA keys are not accepted"),
    ({"public_key": 7}, "public_key must be"),
    ({"name": "x"}, "public_key must be"),
    ({"public_key": "ssh-ed25519 AAAA", "name": ["x"]}, "name must be a string"),
    ([], "send a JSON object"),
]


def test_bad_api_requests_are_refused_and_audited(client: FlaskClient, core: Sealroom,
                                                  alice: str) -> None:
    for body, message in BAD_BODIES:
        response = client.post("/api/v1/ssh-keys", headers=bearer(alice), json=body)
        assert response.status_code == 400, body
        assert message in response.get_json()["error"]["message"], body
        assert [e for e in recorded(core, request_id=response.headers["X-Request-Id"])
                if e.outcome == "denied"], body
    assert _stored(core) == 0


def test_roles_without_a_shell_have_no_ssh_keys(client: FlaskClient, make_user: MakeUser,
                                                keys: dict[str, KeyFile]) -> None:
    _, approver = make_user("pat", "approver")
    assert client.get("/api/v1/ssh-keys", headers=bearer(approver)).status_code == 403
    assert client.post("/api/v1/ssh-keys", headers=bearer(approver),
                       json={"public_key": keys["ed25519"].line}).status_code == 403


# --- the account page -----------------------------------------------------------------------


def _logged_in(app: Flask, name: str) -> FlaskClient:
    client = app.test_client()
    assert login(client, name, PASSWORD).status_code == 302
    return client


def _post(client: FlaskClient, path: str, data: dict[str, str] | None = None) -> Any:
    return client.post(path, data={"csrf_token": csrf_from(client, "/account"),
                                   **(data or {})})


def test_the_account_page_adds_shows_and_removes_keys(app: Flask, core: Sealroom, alice: str,
                                                      keys: dict[str, KeyFile]) -> None:
    client = _logged_in(app, "alice")
    page = client.get("/account").get_data(as_text=True)
    assert 'id="ssh-keys-none"' in page and 'id="ssh-key-form"' in page
    assert "ssh -p 2222 alice@localhost" in page
    assert 'id="ssh-host-key-none"' in page  # the gateway has not made its key yet

    added = _post(client, "/account/ssh-keys", {"public_key": keys["ecdsa256"].line,
                                                "name": "laptop"})
    assert added.status_code == 303
    page = client.get("/account").get_data(as_text=True)
    fingerprint = keys["ecdsa256"].keygen_fingerprint()
    assert fingerprint in page and "ecdsa-sha2-nistp256 (256 bits)" in page and "laptop" in page
    [key] = ssh_keys.list_mine(core, _as(core, "alice"))

    refused = _post(client, "/account/ssh-keys", {"public_key": keys["rsa2048"].line})
    assert refused.status_code == 400
    text = refused.get_data(as_text=True)
    assert "SSH key not added: RSA keys must have at least 3072 bits; this one has 2048" in text
    assert keys["rsa2048"].line.split()[1] in text  # the form keeps what was pasted
    assert len(ssh_keys.list_mine(core, _as(core, "alice"))) == 1

    private = keys["ed25519"].private.read_text()
    refused = _post(client, "/account/ssh-keys", {"public_key": private})
    assert refused.status_code == 400
    text = refused.get_data(as_text=True)
    assert "this is a PRIVATE key; paste the .pub file" in text
    assert private.splitlines()[1] not in text  # never shown back
    with_bom = _post(client, "/account/ssh-keys", {"public_key": "\ufeff" + keys["second"].line})
    assert with_bom.status_code == 303 and len(ssh_keys.list_mine(core, _as(core, "alice"))) == 2

    removed = _post(client, f"/account/ssh-keys/{key['id']}/remove")
    assert removed.status_code == 303
    assert fingerprint not in client.get("/account").get_data(as_text=True)
    again = _post(client, f"/account/ssh-keys/{key['id']}/remove")
    assert again.status_code == 404 and "not removed" in again.get_data(as_text=True)


def test_the_key_forms_need_a_csrf_token(app: Flask, core: Sealroom, alice: str,
                                         keys: dict[str, KeyFile]) -> None:
    client = _logged_in(app, "alice")
    refused = client.post("/account/ssh-keys", data={"public_key": keys["ed25519"].line})
    assert refused.status_code == 400 and _stored(core) == 0
    assert recorded(core, "auth:request:deny")[-1].reason.startswith("CSRF")
    [key_id] = [ssh_keys.add(core, _as(core, "alice"), keys["ed25519"].line)["id"]]
    assert client.post(f"/account/ssh-keys/{key_id}/remove").status_code == 400
    assert len(ssh_keys.list_mine(core, _as(core, "alice"))) == 1


def test_the_page_names_the_public_host_and_the_gateways_host_key(
        core: Sealroom, alice: str) -> None:
    core.settings = dataclasses.replace(core.settings, ssh_public_host="sealroom.example",
                                        ssh_port=2200)
    host = _keygen(core.settings.home, core.settings.ssh_host_key.name, "-t", "ed25519",
                   comment="gateway")
    assert host.private == core.settings.ssh_host_key
    page = _logged_in(create_app(sealroom=core), "alice").get("/account").get_data(
        as_text=True)
    assert "ssh -p 2200 alice@sealroom.example" in page
    assert f'<code id="ssh-host-key">{host.keygen_fingerprint()}</code>' in page


def test_roles_without_a_shell_see_no_ssh_section(app: Flask, make_user: MakeUser) -> None:
    make_user("pat", "approver")
    page = _logged_in(app, "pat").get("/account").get_data(as_text=True)
    assert 'id="ssh-keys"' not in page and "ssh -p" not in page


# --- the CLI, over real HTTP ----------------------------------------------------------------


def _cli(served: str, token: str, *args: str, stdin: str | None = None) -> Any:
    return CliRunner().invoke(main, ["ssh-key", *args], input=stdin,
                              env={"SEALROOM_URL": served, "SEALROOM_TOKEN": token})


def test_the_cli_adds_lists_and_removes_keys(served: str, core: Sealroom, alice: str,
                                             keys: dict[str, KeyFile]) -> None:
    key = keys["ed25519"]
    added = _cli(served, alice, "add", str(key.public), "--name", "laptop")
    assert added.exit_code == 0, added.output
    assert key.keygen_fingerprint() in added.output and "laptop" in added.output
    piped = _cli(served, alice, "add", "-", stdin=keys["second"].line + "\n")
    assert piped.exit_code == 0 and "second@laptop" in piped.output

    listed = _cli(served, alice, "list")
    assert listed.exit_code == 0
    assert key.keygen_fingerprint() in listed.output and "ssh-ed25519" in listed.output
    [first, _] = ssh_keys.list_mine(core, _as(core, "alice"))

    removed = _cli(served, alice, "remove", str(first["id"]))
    assert removed.exit_code == 0 and "removed" in removed.output
    assert key.keygen_fingerprint() not in _cli(served, alice, "list").output
    missing = _cli(served, alice, "remove", str(first["id"]))
    assert missing.exit_code == 1 and f"no SSH key {first['id']}" in missing.output


def test_the_cli_refuses_clearly(served: str, core: Sealroom, alice: str,
                                 keys: dict[str, KeyFile], tmp_path: Path) -> None:
    weak = _cli(served, alice, "add", str(keys["rsa2048"].public))
    assert weak.exit_code == 1 and "at least 3072 bits; this one has 2048" in weak.output
    absent = _cli(served, alice, "add", str(tmp_path / "nope.pub"))
    assert absent.exit_code != 0 and "nope.pub" in absent.output
    assert _cli(served, "", "list").exit_code == 1


def test_the_cli_never_sends_a_private_key(served: str, core: Sealroom, alice: str,
                                           keys: dict[str, KeyFile]) -> None:
    refused = _cli(served, alice, "add", str(keys["ed25519"].private))
    assert refused.exit_code == 1
    assert "is a PRIVATE key, and was not sent" in refused.output
    assert f"{keys['ed25519'].private}.pub" in refused.output
    assert recorded(core, ADD) == []  # the console never saw it
    assert _stored(core) == 0


def test_the_operator_has_no_keys_of_its_own(core: Sealroom, keys: dict[str, KeyFile]) -> None:
    with pytest.raises(ServiceError) as refused:
        ssh_keys.add(core, OPERATOR, keys["ed25519"].line)
    assert refused.value.status == 403 and _stored(core) == 0
    assert ssh_keys.list_mine(core, OPERATOR) == []
    [event] = recorded(core, ADD)
    assert event.outcome == "denied"
