"""Permissions as `scope:resource:action` names, the roles that hold them, and view declarations.

Every view declares its permission with `@requires(...)` or `@public`; a test walks
`app.url_map` and fails on any endpoint that declares neither (safe by default).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any, TypeVar

from console.models import Role

F = TypeVar("F", bound=Callable[..., Any])

#: Marker for endpoints anyone may call (login page, static files, health).
PUBLIC = "public"


class Permission(enum.StrEnum):
    SELF_READ = "account:self:read"
    SANDBOX_LAUNCH = "sandbox:sandbox:launch"
    SANDBOX_READ = "sandbox:sandbox:read"
    SANDBOX_STOP = "sandbox:sandbox:stop"
    LOGS_READ = "sandbox:logs:read"
    OUTBOX_READ = "sandbox:outbox:read"
    METRICS_READ = "system:metrics:read"
    RELEASE_REQUEST = "release:request:create"
    RELEASE_READ = "release:request:read"
    RELEASE_REVIEW = "release:request:review"
    RELEASE_WITHDRAW = "release:request:withdraw"
    BUNDLE_DOWNLOAD = "release:bundle:download"
    AUDIT_READ = "audit:event:read"
    AUDIT_EXPORT = "audit:event:export"
    POLICY_READ = "policy:policy:read"
    POLICY_WRITE = "policy:policy:write"
    SANDBOX_OVERSEE = "sandbox:any:stop"  # list every running sandbox, stop any (with a reason)
    DISCLOSURE_READ = "policy:disclosure:read"  # what each user has been shown of sandboxes
    PROJECT_USE = "sandbox:project:use"  # create projects, list one's own and shared ones
    DATASET_READ = "data:dataset:read"  # datasets and their versions (not their files)
    DATASET_REGISTER = "data:dataset:register"  # register a dataset or a new version
    DATASET_RETIRE = "data:dataset:retire"
    LINEAGE_READ = "audit:lineage:read"  # every sandbox and release descending from data
    #: Anyone's sandbox page, read-only: the console-composed facts; its log, outbox names and
    #: metrics only through the paid, audited paths, charged to the reader's own budget.
    SANDBOX_INSPECT = "audit:sandbox:read"
    RELEASE_INSPECT = "audit:release:read"  # anyone's release request pages, read-only
    TOKEN_SELF = "account:token:manage"  # list, make and revoke one's own API tokens
    PASSWORD_SELF = "account:password:change"  # change one's own password
    SSH_KEY_SELF = "account:ssh_key:manage"  # add, list and remove one's own SSH public keys
    USER_ADMIN = "admin:user:manage"  # create users, (de)activate them, reset passwords
    TOKEN_ADMIN = "admin:token:manage"  # list and revoke anyone's API tokens
    DATASET_IMPORT = "admin:dataset:import"  # register from the host's import directory


_EVERYONE = frozenset({Permission.SELF_READ, Permission.TOKEN_SELF, Permission.PASSWORD_SELF})

ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.ENGINEER: _EVERYONE | {
        Permission.SANDBOX_LAUNCH,
        Permission.SSH_KEY_SELF,  # the gateway opens shells in one's own sandboxes
        Permission.SANDBOX_READ,
        Permission.SANDBOX_STOP,
        Permission.LOGS_READ,
        Permission.OUTBOX_READ,
        Permission.RELEASE_REQUEST,
        Permission.RELEASE_READ,
        Permission.RELEASE_WITHDRAW,
        Permission.BUNDLE_DOWNLOAD,
        Permission.PROJECT_USE,
        Permission.DATASET_READ,
    },
    Role.APPROVER: _EVERYONE | {
        Permission.RELEASE_READ,
        Permission.RELEASE_REVIEW,
        Permission.BUNDLE_DOWNLOAD,
    },
    Role.SECURITY_OFFICER: _EVERYONE | {
        Permission.POLICY_READ,
        Permission.POLICY_WRITE,
        Permission.SANDBOX_OVERSEE,
        Permission.DISCLOSURE_READ,
        Permission.DATASET_READ,
        Permission.DATASET_REGISTER,
        Permission.DATASET_RETIRE,
        Permission.LINEAGE_READ,
    },
    Role.AUDITOR: _EVERYONE | {
        Permission.AUDIT_READ,
        Permission.AUDIT_EXPORT,
        Permission.POLICY_READ,
        Permission.DISCLOSURE_READ,
        Permission.DATASET_READ,
        Permission.LINEAGE_READ,
        Permission.SANDBOX_INSPECT,
        Permission.RELEASE_INSPECT,
    },
    Role.ADMIN: _EVERYONE | {
        Permission.USER_ADMIN,
        Permission.TOKEN_ADMIN,
        Permission.DATASET_IMPORT,
        Permission.METRICS_READ,
        Permission.AUDIT_READ,
        Permission.AUDIT_EXPORT,
        Permission.DATASET_READ,
        Permission.DATASET_REGISTER,
        Permission.DATASET_RETIRE,
        Permission.LINEAGE_READ,
    },
}


def role_has(role: str, permission: Permission) -> bool:
    try:
        return permission in ROLE_PERMISSIONS[Role(role)]
    except ValueError:
        return False


def declared_permission(view: Callable[..., Any]) -> str | None:
    """The permission a view declares; for one open to several (`requires_any`), the first."""
    return getattr(view, "sealroom_permission", None)


def declared_permissions(view: Callable[..., Any]) -> tuple[str, ...]:
    """Every permission that opens a view (any one of them is enough)."""
    found: tuple[str, ...] = getattr(view, "sealroom_permissions", ())
    first = declared_permission(view)
    return found or ((first,) if first is not None else ())


def declare(view: F, permission: str, *more: str) -> F:
    view.sealroom_permission = permission  # type: ignore[attr-defined]
    view.sealroom_permissions = (permission, *more)  # type: ignore[attr-defined]
    return view
