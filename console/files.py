"""Who may read what under the data directory: one rule table, and the walk that repairs
what differs from it (`secure_data_dir`, run by `sealroom init` and at every console start).

Everything is private to the console's own user (directories 0700, files 0600), except what
a container must read: dataset copies belong to the sandbox user, readable by it alone, and
a sandbox's own workspace, outbox and cluster keys are the sandbox user's. The walk never
follows a link and never enters a mounted filesystem (a sandbox's or a project's volume).
"""

from __future__ import annotations

import enum
import fnmatch
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from sandbox.spec import SANDBOX_GID, SANDBOX_UID

__all__ = ["DATASET_COPY", "RULES", "Reach", "Repair", "FileRule", "expected", "seal_dataset_copy",
           "secure_data_dir", "secure_tree"]


class Reach(enum.Enum):
    """How far a rule goes below the path it matches."""

    #: The path and everything below it (unless a later path matches a rule of its own).
    TREE = "tree"
    #: The path alone: what is inside belongs to a sandbox, and is left as it is.
    TOP = "top"
    #: Not touched at all (work in progress, private by its own parent's mode).
    SKIP = "skip"


@dataclass(frozen=True)
class FileRule:
    """What a path matching `pattern` (relative to the data directory, `/`-separated,
    shell wildcards where `*` stays within one name) should be."""

    pattern: str
    dir_mode: int
    file_mode: int
    #: (uid, gid) it must belong to; None: whoever runs the console (never changed).
    owner: tuple[int, int] | None = None
    reach: Reach = Reach.TREE
    why: str = ""


_SANDBOX = (SANDBOX_UID, SANDBOX_GID)

DATASET_COPY = FileRule(
    "datasets/*", 0o500, 0o400, owner=_SANDBOX,
    why="dataset copies: mounted read-only into sandboxes, read as the sandbox user only")

#: The first rule whose pattern matches a path applies to it; every path matches the last.
RULES: tuple[FileRule, ...] = (
    FileRule("datasets/.*", 0o700, 0o600, reach=Reach.SKIP,
             why="a registration in progress (made 0700 by mkdtemp)"),
    DATASET_COPY,
    FileRule("sandboxes/*/workspace", 0o700, 0o600, owner=_SANDBOX, reach=Reach.TOP,
             why="a sandbox's own workspace (a plain directory, from before quotas)"),
    FileRule("sandboxes/*/outbox", 0o700, 0o600, owner=_SANDBOX, reach=Reach.TOP,
             why="a sandbox's own outbox (a plain directory, from before quotas)"),
    FileRule("sandboxes/*/mpi", 0o700, 0o600, owner=_SANDBOX,
             why="a cluster's keys, read by its ranks' sshd as the sandbox user"),
    FileRule("*", 0o700, 0o600, why="the console's own: database, keys, checkpoints, "
                                    "release blobs and bundles, volume images"),
)


@dataclass(frozen=True)
class Repair:
    """One path put right: `path` relative to the data directory, `change` what was done."""

    path: str
    change: str

    def __str__(self) -> str:
        return f"{self.path}: {self.change}"


def expected(relative: str) -> FileRule:
    """The rule for a path relative to the data directory ("" is the directory itself)."""
    for rule in RULES:
        if relative and fnmatch.fnmatchcase(relative, rule.pattern) \
                and relative.count("/") == rule.pattern.count("/"):
            return rule
    return RULES[-1]


def secure_data_dir(home: Path, *extra: Path, repair: bool = True) -> list[Repair]:
    """Repair every mode and owner under `home` (and each of `extra`, a directory the
    console keeps elsewhere, such as the audit checkpoints' copy) that differs from
    `RULES`; the repairs made, in walk order (`repair` False: only those needed, nothing
    changed). A missing directory counts as done."""
    repairs = list(secure_tree(home, repair=repair))
    for root in extra:
        if root.resolve() != home.resolve() and not root.resolve().is_relative_to(home.resolve()):
            repairs.extend(Repair(f"{root}/{r.path}".rstrip("/"), r.change)
                           for r in secure_tree(root, repair=repair))
    return repairs


def secure_tree(root: Path, *, repair: bool = True) -> Iterator[Repair]:
    """The walk of one tree under `RULES`: a generator, so nothing is repaired unless it is
    consumed."""
    if not root.is_dir() or root.is_symlink():
        return
    yield from _walk(root, "", RULES[-1], inherited=False, repair=repair)


def seal_dataset_copy(copy: Path) -> None:
    """Hand a newly made dataset copy to the sandbox user, readable by it alone (the rule
    of `datasets/*`), never following a link in it."""
    for _ in _walk(copy, "", DATASET_COPY, inherited=True, forced=True):
        pass


def _walk(path: Path, relative: str, parent_rule: FileRule, *, inherited: bool,
          forced: bool = False, repair: bool = True) -> Iterator[Repair]:
    rule = parent_rule if forced else expected(relative) if relative else RULES[-1]
    if inherited and rule is RULES[-1]:
        rule = parent_rule  # inside a subtree whose rule reaches down (a dataset copy)
    if rule.reach is Reach.SKIP:
        return
    try:
        found = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(found.st_mode):
        return  # never followed, never changed: a link's own mode means nothing
    directory = stat.S_ISDIR(found.st_mode)
    if directory and relative and os.path.ismount(path):
        return  # a volume's own filesystem (perhaps read-only): its owner looks after it
    yield from _fix(path, relative, found, rule, directory, repair=repair)
    if not directory or rule.reach is Reach.TOP:
        return
    try:
        names = sorted(os.listdir(path))
    except FileNotFoundError:
        return
    for name in names:
        child = f"{relative}/{name}" if relative else name
        yield from _walk(path / name, child, rule,
                         inherited=inherited or (rule is not RULES[-1]), forced=forced,
                         repair=repair)


def _fix(path: Path, relative: str, found: os.stat_result, rule: FileRule,
         directory: bool, *, repair: bool) -> Iterator[Repair]:
    shown = relative or "."
    owner = rule.owner
    if owner is not None and (found.st_uid, found.st_gid) != owner and os.geteuid() == 0:
        change = f"owner {found.st_uid}:{found.st_gid} -> {owner[0]}:{owner[1]}"
        yield Repair(shown, _applied(change, repair, lambda: os.chown(
            path, owner[0], owner[1], follow_symlinks=False)))
    mode = rule.dir_mode if directory else rule.file_mode
    current = stat.S_IMODE(found.st_mode)
    if current != mode:
        yield Repair(shown, _applied(f"mode {current:04o} -> {mode:04o}", repair,
                                     lambda: os.chmod(path, mode)))


def _applied(change: str, repair: bool, action: Callable[[], None]) -> str:
    """`change`, made unless only asked what is wrong; said so when it cannot be made (a
    start must not fail on one path, and the operator must see it)."""
    if repair:
        try:
            action()
        except OSError as exc:
            return f"{change} FAILED ({exc.strerror})"
    return change
