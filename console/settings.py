"""Configuration, read once from `SEALROOM_*` environment variables, and the registry of
sandbox backends a setting may name (`SEALROOM_BACKEND`).

Every path lives under the data directory (`SEALROOM_HOME`, default `./var`).
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sandbox.backend import Backend

#: Builds the backend a setting names; called once, on the first use of the engine.
BackendFactory = Callable[["Settings"], "Backend"]

DEFAULT_BACKEND = "docker"


class SettingsError(ValueError):
    """A setting the console cannot start with; the message names the variable and what it
    accepts."""


def _docker_backend(settings: Settings) -> Backend:
    # Imported here: commands that never touch the engine do not load the Docker client.
    from sandbox.docker_backend import DockerBackend
    from sandbox.storage import LocalStorage

    return DockerBackend(base_url=settings.docker_host, installation=settings.installation_id(),
                         storage=LocalStorage(settings.sandboxes_dir))


# The product registers only the real engine; tests register their in-memory stand-in
# (tests/conftest.py), as Warehouse registers storage against an interface.
_BACKENDS: dict[str, BackendFactory] = {DEFAULT_BACKEND: _docker_backend}


def register_backend(name: str, factory: BackendFactory) -> None:
    """Make `SEALROOM_BACKEND=name` build its backend with `factory`."""
    _BACKENDS[name] = factory


def backend_names() -> list[str]:
    """The values `SEALROOM_BACKEND` accepts, sorted."""
    return sorted(_BACKENDS)


def build_backend(settings: Settings) -> Backend:
    """The backend `settings.backend` names, newly built."""
    return _BACKENDS[settings.backend](settings)


@dataclass(frozen=True)
class Rate:
    """At most `amount` in any `seconds`: a limit as the `SEALROOM_*_RATE` settings write it."""

    amount: int
    seconds: float

    def __str__(self) -> str:
        return f"{self.amount} per {self.seconds:g} seconds"


_RATE = re.compile(r"^\s*(\d+)\s*(?:per|/)\s*(\d+\s*)?(second|minute|hour|day)s?\s*$")
_UNIT_SECONDS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}


def parse_rate(text: str) -> Rate:
    """`10 per minute`, `10/minute`, `100 per 5 minutes` (the syntax Flask-Limiter uses)."""
    match = _RATE.match(text.lower())
    if match is None:
        raise ValueError("write a rate as '<number> per <unit>' (second, minute, hour, day), "
                         "e.g. '10 per minute'")
    amount, count, unit = match.groups()
    seconds = int(count or 1) * _UNIT_SECONDS[unit]
    if int(amount) < 1 or seconds < 1:
        raise ValueError("a rate allows at least 1 in at least one second")
    return Rate(int(amount), float(seconds))


def parse_bind(text: str) -> tuple[str, int]:
    """`host:port` (`[v6]:port` for IPv6) as an address to listen on; ValueError if not."""
    host, sep, port = text.strip().rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r} is not host:port (e.g. 10.0.0.5:9464)")
    return host, int(port)


def _env(name: str, default: str) -> str:
    return os.environ.get(f"SEALROOM_{name}", default)


@dataclass(frozen=True)
class Settings:
    home: Path = field(default_factory=lambda: Path(_env("HOME", "var")).resolve())
    database_url: str = ""
    # Which sandbox backend drives the engine (a name registered with `register_backend`).
    backend: str = field(default_factory=lambda: _env("BACKEND", DEFAULT_BACKEND))
    docker_host: str | None = field(default_factory=lambda: os.environ.get("SEALROOM_DOCKER_HOST"))
    sandbox_image: str = field(default_factory=lambda: _env("SANDBOX_IMAGE", ""))
    base_image: str | None = field(default_factory=lambda: os.environ.get("SEALROOM_BASE_IMAGE"))
    cache_dir: Path = field(default_factory=lambda: Path(
        os.environ.get("SEALROOM_CACHE_DIR")
        or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sealroom"))
    host: str = field(default_factory=lambda: _env("BIND", "127.0.0.1"))
    port: int = field(default_factory=lambda: int(_env("PORT", "8000")))
    max_request_mb: int = field(default_factory=lambda: int(_env("MAX_REQUEST_MB", "64")))
    https: bool = field(default_factory=lambda: _env("HTTPS", "0") == "1")
    supervise_interval_s: float = field(
        default_factory=lambda: float(_env("SUPERVISE_INTERVAL", "1.0")))
    # Login attempts (wrong passwords; a success gives its attempt back): per source address
    # and user name, per source address whatever the name, and per user name from anywhere
    # (addresses the user last logged in from are exempt from the last). See
    # console/services/flood.py and docs/operator-guide.md.
    login_rate: str = field(default_factory=lambda: _env("LOGIN_RATE", "10 per minute"))
    login_rate_per_address: str = field(
        default_factory=lambda: _env("LOGIN_RATE_PER_ADDRESS", "30 per minute"))
    login_rate_per_user: str = field(
        default_factory=lambda: _env("LOGIN_RATE_PER_USER", "30 per minute"))
    # Refused requests (not logged in, bad token, wrong role, bad CSRF token) recorded one
    # by one per source and period; beyond it a source is answered 429 and its refusals are
    # counted into one audit event per source and period.
    refusal_rate: str = field(default_factory=lambda: _env("REFUSAL_RATE", "60 per minute"))
    # Proxies whose X-Forwarded-For is believed (addresses or CIDR blocks, comma-separated;
    # default none): only a request whose peer is one of them has its client address taken
    # from the header.
    trusted_proxies: tuple[str, ...] = field(
        default_factory=lambda: tuple(_env("TRUSTED_PROXIES", "").split(",")))
    # Audit checkpoints: every N events, every T seconds when new events exist, and a copy
    # in a directory meant for another volume (default: under the data directory).
    audit_checkpoint_every: int = field(
        default_factory=lambda: int(_env("AUDIT_CHECKPOINT_EVERY", "256")))
    audit_checkpoint_seconds: float = field(
        default_factory=lambda: float(_env("AUDIT_CHECKPOINT_SECONDS", "60")))
    # The console walks the whole chain itself this often (0: never), so a break is found
    # and recorded even when no auditor asks.
    audit_verify_interval_s: float = field(
        default_factory=lambda: float(_env("AUDIT_VERIFY_INTERVAL", "600")))
    audit_checkpoint_dir: Path | None = field(
        default_factory=lambda: Path(v).resolve()
        if (v := os.environ.get("SEALROOM_AUDIT_CHECKPOINT_DIR")) else None)
    # API tokens: the lifetime of a new token unless its maker chooses, and the longest
    # anyone may choose (days).
    token_ttl_days: int = field(default_factory=lambda: int(_env("TOKEN_TTL_DAYS", "90")))
    token_max_days: int = field(default_factory=lambda: int(_env("TOKEN_MAX_DAYS", "365")))
    # The only host directory the admin pages register datasets from (default: <home>/imports).
    import_dir: Path | None = field(
        default_factory=lambda: Path(v).resolve()
        if (v := os.environ.get("SEALROOM_IMPORT_DIR")) else None)
    # The SSH gateway (`sealroom ssh-gateway`, `sealroom up --ssh-port`): its port on the
    # console's address, and the host name engineers' `ssh` commands name (shown on pages).
    ssh_port: int = field(default_factory=lambda: int(_env("SSH_PORT", "2222")))
    ssh_public_host: str = field(default_factory=lambda: _env("SSH_PUBLIC_HOST", ""))
    # Prometheus metrics without a token on an address of their own (`host:port`; empty:
    # only the console's token-protected /metrics). A private interface only: anyone who
    # reaches it reads the platform's counts and user names.
    metrics_bind: str = field(default_factory=lambda: _env("METRICS_BIND", ""))
    testing: bool = False

    def __post_init__(self) -> None:
        self._check_limits()
        if self.backend not in _BACKENDS:
            raise SettingsError(f"SEALROOM_BACKEND={self.backend!r} is not a sandbox backend; "
                                f"use one of: {', '.join(backend_names())}")
        if not self.database_url:
            object.__setattr__(self, "database_url", f"sqlite:///{self.home / 'sealroom.db'}")
        if self.audit_checkpoint_dir is None:
            object.__setattr__(self, "audit_checkpoint_dir", self.home / "audit-checkpoints")
        if self.import_dir is None:
            object.__setattr__(self, "import_dir", self.home / "imports")
        if not 1 <= self.token_ttl_days <= self.token_max_days:
            raise SettingsError(f"SEALROOM_TOKEN_TTL_DAYS={self.token_ttl_days} must be between 1 "
                                f"and SEALROOM_TOKEN_MAX_DAYS ({self.token_max_days})")

    def _check_limits(self) -> None:
        for variable, text in (("LOGIN_RATE", self.login_rate),
                               ("LOGIN_RATE_PER_ADDRESS", self.login_rate_per_address),
                               ("LOGIN_RATE_PER_USER", self.login_rate_per_user),
                               ("REFUSAL_RATE", self.refusal_rate)):
            try:
                parse_rate(text)
            except ValueError as exc:
                raise SettingsError(f"SEALROOM_{variable}={text!r}: {exc}") from None
        entries = tuple(e.strip() for e in self.trusted_proxies if e.strip())
        for entry in entries:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise SettingsError(f"SEALROOM_TRUSTED_PROXIES: {entry!r} is not an IP "
                                    "address or CIDR block") from None
        object.__setattr__(self, "trusted_proxies", entries)
        if self.metrics_bind:
            try:
                parse_bind(self.metrics_bind)
            except ValueError as exc:
                raise SettingsError(f"SEALROOM_METRICS_BIND: {exc}") from None

    @property
    def audit_checkpoint_file(self) -> Path:
        """The append-only checkpoint file (`checkpoints.jsonl` in the checkpoint directory)."""
        assert self.audit_checkpoint_dir is not None
        return self.audit_checkpoint_dir / "checkpoints.jsonl"

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        settings = cls()
        if "home" in overrides and "database_url" not in overrides:
            overrides["database_url"] = f"sqlite:///{Path(overrides['home']) / 'sealroom.db'}"
        if "home" in overrides and "audit_checkpoint_dir" not in overrides and \
                not os.environ.get("SEALROOM_AUDIT_CHECKPOINT_DIR"):
            overrides["audit_checkpoint_dir"] = Path(overrides["home"]) / "audit-checkpoints"
        if "home" in overrides and "import_dir" not in overrides and \
                not os.environ.get("SEALROOM_IMPORT_DIR"):
            overrides["import_dir"] = Path(overrides["home"]) / "imports"
        return replace(settings, **overrides)

    @property
    def sandboxes_dir(self) -> Path:
        return self.home / "sandboxes"

    @property
    def datasets_dir(self) -> Path:
        return self.home / "datasets"

    @property
    def recordings_dir(self) -> Path:
        """Terminal session recordings (asciicast v2), one file a session."""
        return self.home / "recordings"

    @property
    def ssh_host_key(self) -> Path:
        """The SSH gateway's host key (Ed25519, OpenSSH format), made once."""
        return self.home / "ssh_host_ed25519_key"

    def ensure_dirs(self) -> None:
        """Make the data directory's top directories, private (`console.files` repairs
        what is below them at init and at every start)."""
        for path in (self.home, self.sandboxes_dir, self.datasets_dir, self.recordings_dir,
                     self.audit_checkpoint_file.parent):
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.home.chmod(0o700)

    def secret_key(self) -> str:
        """Flask's session key: made once per installation, kept in the data directory."""
        path = self.home / "secret_key"
        if not path.exists():
            path.write_text(secrets.token_hex(32))
            path.chmod(0o600)
        return path.read_text().strip()

    def installation_id(self) -> str:
        """Labels this installation's containers; several installations may share an engine."""
        path = self.home / "installation_id"
        if not path.exists():
            path.write_text(secrets.token_hex(8))
            path.chmod(0o600)
        return path.read_text().strip()
