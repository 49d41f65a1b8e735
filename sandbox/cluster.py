"""What an MPI cluster's members need beyond a single sandbox: their commands, their
addresses on the shared loopback, and the SSH keys and configuration made for one launch.

The members of a cluster share one network namespace holding only loopback: the launcher's
(member `main`, rank 0, created with no network); every other rank joins it. Rank N listens
on 127.0.0.(N+1):2222 with an sshd running as the sandbox user; the launcher reaches the
ranks there with a key made for this launch. Nothing outside the namespace can reach it, and
it reaches nothing outside: there is no interface but `lo` (docs/architecture.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sandbox.backend import LAUNCHER

#: Where the cluster's keys and SSH configuration are mounted (read-only) in every member.
SECRETS_TARGET = "/etc/sealroom/mpi"
#: The port every rank's sshd listens on, each on its own loopback address.
SSH_PORT = 2222
#: The program in sealroom/horovod that plays a member's role (images/horovod/sealroom-mpi).
MPI_PROGRAM = "sealroom-mpi"


def member_name(rank: int) -> str:
    return LAUNCHER if rank == 0 else f"rank-{rank}"


def rank_of(name: str) -> int | None:
    """The rank a member name stands for (`main` is 0), or None for no member of ours."""
    if name == LAUNCHER:
        return 0
    prefix, _, number = name.partition("-")
    if prefix == "rank" and number.isdigit() and str(int(number)) == number:
        return int(number)
    return None


def rank_address(rank: int) -> str:
    return f"127.0.0.{rank + 1}"


#: mpirun's `--tag-output` mark: `[<job>,<rank>]<stdout>:` (or `<stderr>:`).
_TAG = re.compile(rb"\[\d+,(\d+)\]<std(?:out|err)>:")


def rank_output(output: bytes, rank: int) -> bytes:
    """One rank's output from a launcher's tagged output, tags removed. mpirun tags each
    chunk it forwards, not each line, so a tag may come in the middle of a line: the bytes
    after a tag, up to the next tag, are that tag's rank's. Bytes before the first tag (a
    chunk cut mid-way) belong to no rank we can name and are left out."""
    tags = list(_TAG.finditer(output))
    parts = []
    for number, tag in enumerate(tags):
        if int(tag.group(1)) == rank:
            end = tags[number + 1].start() if number + 1 < len(tags) else len(output)
            parts.append(output[tag.end():end])
    return b"".join(parts)


def launcher_command(ranks: int, command: tuple[str, ...]) -> list[str]:
    return [MPI_PROGRAM, "launch", str(ranks), *command]


def rank_command(rank: int) -> list[str]:
    return [MPI_PROGRAM, "rank", str(rank)]


_SSHD_CONFIG = f"""\
Port {SSH_PORT}
HostKey {SECRETS_TARGET}/host_ed25519
AuthorizedKeysFile {SECRETS_TARGET}/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
UsePAM no
StrictModes no
PidFile none
PermitUserEnvironment no
AllowTcpForwarding no
AllowAgentForwarding no
AllowStreamLocalForwarding no
X11Forwarding no
PermitTunnel no
GatewayPorts no
PrintMotd no
LogLevel ERROR
"""

_SSH_CONFIG = f"""\
Host *
  Port {SSH_PORT}
  User sandbox
  IdentityFile {SECRETS_TARGET}/id_ed25519
  IdentitiesOnly yes
  UserKnownHostsFile {SECRETS_TARGET}/known_hosts
  GlobalKnownHostsFile /dev/null
  StrictHostKeyChecking yes
  BatchMode yes
  LogLevel ERROR
"""


@dataclass(frozen=True)
class ClusterSecrets:
    """The files of one launch's SSH set-up, by name. Made fresh for every launch, written
    only to the cluster's own directory, never logged, gone with the cluster."""

    files: dict[str, bytes]

    @classmethod
    def generate(cls, ranks: int) -> ClusterSecrets:
        user, host = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
        user_public = _openssh_public(user)
        host_public = _openssh_public(host)
        known = b"".join(f"[{rank_address(n)}]:{SSH_PORT} ".encode() + host_public + b"\n"
                         for n in range(1, ranks))
        return cls({
            "id_ed25519": _openssh_private(user),
            "id_ed25519.pub": user_public + b"\n",
            "authorized_keys": user_public + b"\n",
            "host_ed25519": _openssh_private(host),
            "known_hosts": known,
            "sshd_config": _SSHD_CONFIG.encode(),
            "ssh_config": _SSH_CONFIG.encode(),
        })


def _openssh_private(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                             serialization.NoEncryption())


def _openssh_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                         serialization.PublicFormat.OpenSSH)
