"""Uploaded code is unpacked safely; the outbox is listed without following links."""

from __future__ import annotations

import io
import os
import stat
import zipfile
from pathlib import Path

import pytest

from sandbox.errors import InvalidUpload
from sandbox.files import UploadLimits, tree_digest, unpack_code

LIMITS = UploadLimits(max_bytes=1 << 20, max_unpacked_bytes=1 << 20, max_files=10)


def _zip(members: dict[str, bytes], link: str | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        if link:
            info = zipfile.ZipInfo(link)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, "/etc/passwd")
    return buffer.getvalue()


def test_script_is_written(tmp_path: Path) -> None:
    digest = unpack_code("train.py", b"print(1)\n", tmp_path, LIMITS)
    assert (tmp_path / "train.py").read_bytes() == b"print(1)\n"
    assert digest.startswith("sha256:")


def test_script_name_cannot_escape(tmp_path: Path) -> None:
    (tmp_path / "ws").mkdir()
    unpack_code("../../evil.py", b"x", tmp_path / "ws", LIMITS)
    assert (tmp_path / "ws" / "evil.py").exists()
    assert not (tmp_path / "evil.py").exists()


def test_zip_is_unpacked(tmp_path: Path) -> None:
    unpack_code("code.zip", _zip({"train.py": b"x", "pkg/mod.py": b"y"}), tmp_path, LIMITS)
    assert (tmp_path / "pkg" / "mod.py").read_bytes() == b"y"


@pytest.mark.parametrize("members, link, message", [
    ({"../escape.py": b"x"}, None, "escapes"),
    ({"/abs.py": b"x"}, None, "escapes"),
    ({"ok.py": b"x"}, "data", "link"),
    ({f"f{i}.py": b"x" for i in range(11)}, None, "entries"),
    ({"big.bin": b"\0" * (2 << 20)}, None, "unpacks"),
])
def test_dangerous_zips_are_refused(tmp_path: Path, members: dict[str, bytes],
                                    link: str | None, message: str) -> None:
    with pytest.raises(InvalidUpload, match=message):
        unpack_code("code.zip", _zip(members, link), tmp_path, LIMITS)


@pytest.mark.parametrize("name, data", [("model.pt", b"x"), ("code.zip", b"not a zip")])
def test_other_uploads_are_refused(tmp_path: Path, name: str, data: bytes) -> None:
    with pytest.raises(InvalidUpload):
        unpack_code(name, data, tmp_path, LIMITS)


def test_oversized_upload_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidUpload, match="at most"):
        unpack_code("train.py", b"x" * (LIMITS.max_bytes + 1), tmp_path, LIMITS)


def test_tree_digest_depends_on_names_and_content(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("1")
    first = tree_digest(tmp_path)
    (tmp_path / "a").write_text("2")
    assert tree_digest(tmp_path)[0] != first[0]
    (tmp_path / "a").rename(tmp_path / "b")
    assert tree_digest(tmp_path)[2] == 1
    os.symlink("/etc", tmp_path / "link")
    with pytest.raises(InvalidUpload):
        tree_digest(tmp_path)
