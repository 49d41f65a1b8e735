"""The one place browser tests take screenshots: always into the test's own temporary folder,
and copied into SEALROOM_SCREENSHOT_DIR when it is set (`make docs-images` sets it to a fresh
folder, then copies the pictures into docs/img). A normal run never touches tracked files."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Protocol

#: Where `make docs-images` collects the pictures; unset in every other run.
OUTPUT_ENV = "SEALROOM_SCREENSHOT_DIR"
_NAME = re.compile(r"[a-z0-9][a-z0-9-]*\.png")


class Screenshotable(Protocol):
    """What of a Playwright `Page` this needs."""

    def screenshot(self, *, path: str, full_page: bool) -> bytes: ...


def take(page: Screenshotable, name: str, tmp_path: Path) -> Path:
    """A full-page picture named `name` (plain lower-case, `.png`) into `tmp_path`, and a
    copy into SEALROOM_SCREENSHOT_DIR if set; returns the temporary file."""
    if not _NAME.fullmatch(name):
        raise ValueError(f"a screenshot's name is lower-case letters, digits and -, .png: {name!r}")
    target = tmp_path / "screenshots" / name
    target.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(target), full_page=True)
    if output := os.environ.get(OUTPUT_ENV):
        folder = Path(output)
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(target, folder / name)
    return target
