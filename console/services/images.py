"""Sandbox images known to this installation, pinned by digest; registration is audited."""

from __future__ import annotations

from sqlmodel import col, select

from audit.chain import append, utc_now
from audit.events import AuditAction, EventDraft
from console.core import Caller, Sealroom
from console.models import Image

DEFAULT_IMAGE = "base"


def register_image(core: Sealroom, caller: Caller, name: str, tag: str, digest: str) -> Image:
    with core.transaction() as session:
        existing = session.exec(select(Image).where(Image.digest == digest)).first()
        if existing:
            return existing
        image = Image(name=name, tag=tag, digest=digest, registered_at=utc_now())
        session.add(image)
        append(session, EventDraft(caller.actor, AuditAction.IMAGE_REGISTER, f"image:{name}",
                                   request_id=caller.request_id,
                                   details={"tag": tag, "digest": digest}))
    return image


def current_image(core: Sealroom, name: str = DEFAULT_IMAGE) -> Image | None:
    with core.read() as session:
        return session.exec(select(Image).where(Image.name == name)
                            .order_by(col(Image.id).desc())).first()
