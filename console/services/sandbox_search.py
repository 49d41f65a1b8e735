"""Finding one's sandboxes: free text over their names and ids, filters by status, tag,
dataset and kind, newest first, a page at a time. The list page, the API and the CLI share
`SandboxQuery`, so a bookmarked URL and an API call with the same parameters agree."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import ColumnElement, func, or_
from sqlmodel import col, select

from console.core import Caller, Sealroom
from console.models import Sandbox, SandboxStatus
from console.services import labels
from console.services.errors import BadRequest
from sandbox.spec import valid_sandbox_id

#: Sandboxes on one page of the list.
PAGE_SIZE = 50
#: The most an API caller may ask for on one page.
PAGE_SIZE_MAX = 500
KINDS = ("single", "mpi")
STATUSES = tuple(str(s) for s in SandboxStatus)


@dataclass(frozen=True)
class SandboxQuery:
    """What to look for; empty fields match everything."""

    text: str = ""  # in the name (any case) or the id
    status: str = ""
    tags: tuple[str, ...] = ()  # every one of them
    dataset: str = ""  # a dataset name the sandbox mounted (any version)
    kind: str = ""
    page: int = 1
    per_page: int = PAGE_SIZE

    @classmethod
    def parse(cls, *, q: str = "", status: str = "", tags: Sequence[str] = (),
              dataset: str = "", kind: str = "", page: str = "", per_page: str = "",
              default_per_page: int = PAGE_SIZE) -> SandboxQuery:
        """From the query parameters `q`, `status`, `tag` (repeatable), `dataset`, `kind`,
        `page` and `per_page` as strings ("": not given); a bad value is `BadRequest`."""
        try:
            text = labels.parse_name(q)
        except BadRequest as exc:
            raise BadRequest(f"the search text: {exc.message}") from None
        status = status.strip()
        if status and status not in STATUSES:
            raise BadRequest(f"status must be one of {', '.join(STATUSES)}, not "
                             f"{status[:40]!r}")
        dataset = dataset.strip()
        if dataset and not valid_sandbox_id(dataset):
            raise BadRequest(f"{dataset[:80]!r} is not a dataset name")
        kind = kind.strip()
        if kind and kind not in KINDS:
            raise BadRequest(f"kind must be 'single' or 'mpi', not {kind[:40]!r}")
        return cls(text=text, status=status,
                   tags=labels.parse_tags(t for t in tags if t.strip()), dataset=dataset,
                   kind=kind, page=_whole(page, "page", 1, 1_000_000),
                   per_page=_whole(per_page, "per_page", default_per_page, PAGE_SIZE_MAX))

    @property
    def filtered(self) -> bool:
        return bool(self.text or self.status or self.tags or self.dataset or self.kind)

    def arguments(self, **changes: object) -> dict[str, object]:
        """The query as URL parameters, empty ones and the first page left out, with
        `changes`: for links to other pages of the same search and to a tag's filter."""
        shown: dict[str, object] = {"q": self.text, "status": self.status,
                                    "tag": list(self.tags), "dataset": self.dataset,
                                    "kind": self.kind, **changes}
        if shown.get("page") == 1:
            del shown["page"]
        return {key: value for key, value in shown.items() if value not in ("", [], None)}


def _whole(value: str, name: str, default: int, most: int) -> int:
    value = value.strip()
    if not value:
        return default
    if not (value.isascii() and value.isdigit() and len(value) <= 7) \
            or not 1 <= int(value) <= most:
        raise BadRequest(f"{name} must be a whole number from 1 to {most:,}")
    return int(value)


@dataclass(frozen=True)
class SandboxPage:
    """One page of the caller's sandboxes that match, and where it is among all of them."""

    sandboxes: Sequence[Sandbox]
    total: int  # how many match
    page: int
    pages: int
    per_page: int

    @property
    def first(self) -> int:
        """The position of this page's first sandbox among all that match (1-based)."""
        return (self.page - 1) * self.per_page + 1 if self.sandboxes else 0


def search(core: Sealroom, caller: Caller, query: SandboxQuery) -> SandboxPage:
    """The caller's own sandboxes matching `query`, newest first, one page of them (the last
    page when `query.page` is past it): one read, no engine call."""
    conditions: list[ColumnElement[bool]] = [col(Sandbox.owner) == caller.name]
    if query.text:
        conditions.append(or_(col(Sandbox.name).icontains(query.text, autoescape=True),
                              col(Sandbox.id).icontains(query.text, autoescape=True)))
    if query.status:
        conditions.append(col(Sandbox.status) == query.status)
    for tag in query.tags:
        # `tags` is a JSON list of tags, which hold no quote: `"tag"` is one whole element.
        conditions.append(col(Sandbox.tags).contains(json.dumps(tag), autoescape=True))
    if query.dataset:
        # `datasets` is written by `json.dumps` of {name, version, digest} objects (launch).
        conditions.append(col(Sandbox.datasets).contains(
            f'"name": {json.dumps(query.dataset)},', autoescape=True))
    if query.kind:
        conditions.append(col(Sandbox.kind) == query.kind)
    with core.read() as session:
        total = session.exec(select(func.count()).select_from(Sandbox)
                             .where(*conditions)).one()
        pages = max(math.ceil(total / query.per_page), 1)
        page = min(query.page, pages)
        rows = session.exec(select(Sandbox).where(*conditions)
                            .order_by(col(Sandbox.created_at).desc(), col(Sandbox.id))
                            .offset((page - 1) * query.per_page).limit(query.per_page)).all()
    return SandboxPage(list(rows), int(total), page, pages, query.per_page)


def tags_in_use(core: Sealroom, caller: Caller) -> list[str]:
    """Every tag on one of the caller's sandboxes, sorted: the list page offers them."""
    with core.read() as session:
        rows = session.exec(select(Sandbox.tags).where(Sandbox.owner == caller.name)
                            .where(Sandbox.tags != "[]").distinct()).all()
    return sorted({str(t) for row in rows for t in json.loads(row or "[]")})


def datasets_in_use(core: Sealroom, caller: Caller) -> list[str]:
    """Every dataset name one of the caller's sandboxes mounted, sorted."""
    with core.read() as session:
        rows = session.exec(select(Sandbox.datasets).where(Sandbox.owner == caller.name)
                            .distinct()).all()
    return sorted({str(d["name"]) for row in rows for d in json.loads(row or "[]")})
