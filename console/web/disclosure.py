"""The disclosure page: how much sandbox-written content each user has been shown today and
per sandbox, against the policy's budgets (security officers and auditors)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, render_template, request

from audit.events import AuditAction
from console.guards import caller, core, requires
from console.permissions import Permission
from console.services import disclosure as disclosure_service
from console.web.links import sandbox_link

disclosure_pages = Blueprint("disclosure_pages", __name__, url_prefix="/disclosure")


@disclosure_pages.route("")
@requires(Permission.DISCLOSURE_READ)
def index() -> Any:
    user = (request.args.get("user") or "").strip()[:64]
    core().record(caller().actor, AuditAction.DISCLOSURE_VIEW,
                  target=f"user:{user}" if user else "disclosure:today",
                  request_id=caller().request_id)
    return render_template(
        "disclosure.html", users=disclosure_service.users_today(core()),
        usage=disclosure_service.usage(core(), user) if user else None,
        budget=core().policy.disclosure, day=disclosure_service.today(),
        sandbox_link=sandbox_link)
