"""Tests never rewrite tracked files: a browser test's screenshot goes to its temporary folder
(and to SEALROOM_SCREENSHOT_DIR only when `make docs-images` sets it), and no test but the
one helper takes screenshots or names docs/img."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.browser import screenshots

TESTS = Path(__file__).resolve().parents[1]
HELPER = TESTS / "browser" / "screenshots.py"
#: A screenshot taken by hand, or a path into the docs' pictures, written any way.
_OWN_WAYS = re.compile(r"\.screenshot\(|docs/img|[\"']docs[\"']\s*/\s*[\"']img[\"']")


class _Page:
    """Stands in for a Playwright page: writes the bytes it was asked for."""

    def screenshot(self, *, path: str, full_page: bool) -> bytes:
        assert full_page
        Path(path).write_bytes(b"\x89PNG picture")
        return b"\x89PNG picture"


def test_a_screenshot_goes_to_the_tests_temporary_folder_only(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(screenshots.OUTPUT_ENV, raising=False)

    taken = screenshots.take(_Page(), "sandbox.png", tmp_path / "test")

    assert taken == tmp_path / "test" / "screenshots" / "sandbox.png"
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.png")) == [
        "test/screenshots/sandbox.png"]


def test_make_docs_images_collects_a_copy_in_its_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(screenshots.OUTPUT_ENV, str(tmp_path / "out"))

    screenshots.take(_Page(), "policy.png", tmp_path / "test")

    assert (tmp_path / "out" / "policy.png").read_bytes() == b"\x89PNG picture"
    assert (tmp_path / "test" / "screenshots" / "policy.png").exists()


@pytest.mark.parametrize("name", ["../README.png", "docs/img/x.png", "Sandbox.PNG", "a.jpg", ""])
def test_a_name_cannot_point_elsewhere(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="screenshot's name"):
        screenshots.take(_Page(), name, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_no_test_but_the_helper_takes_screenshots_or_writes_docs_images() -> None:
    offenders = [
        f"{path.relative_to(TESTS)}:{number}: {line.strip()}"
        for path in sorted(TESTS.rglob("*.py")) if path not in (HELPER, Path(__file__))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if _OWN_WAYS.search(line)]
    assert offenders == [], "take screenshots with tests.browser.screenshots.take:\n" + \
        "\n".join(offenders)
