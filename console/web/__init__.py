"""Console pages, one blueprint per audience; `may`, the templates' one question about the
viewer (does their role hold a permission), so links appear only where they lead; and how a
service's refusal reads on a page."""

from __future__ import annotations

from flask_login import current_user

from console.permissions import Permission, role_has
from console.services.errors import ServiceError


def may(permission: str) -> bool:
    """Whether the logged-in user's role holds `permission` (named as in `Permission`, for
    templates: `may('DATASET_READ')`)."""
    return bool(current_user.is_authenticated) and role_has(current_user.role,
                                                            Permission[permission])


def refusal(exc: ServiceError) -> str:
    """A service's refusal as a page message, with the policy rule that decided, if any."""
    if exc.rule and exc.policy_version:
        return f"{exc.message} (policy version {exc.policy_version}, rule {exc.rule})"
    return f"{exc.message} (policy rule {exc.rule})" if exc.rule else exc.message
