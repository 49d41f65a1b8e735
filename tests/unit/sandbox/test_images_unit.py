"""Image tags, build inputs and the demo dataset, without Docker."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from sandbox import images
from sandbox.examples.demo_dataset import write_demo_dataset

DOCKERFILE = b"ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\n"
REQUIREMENTS = b"torch==2.13.0\n"
BASE_ID = "sha256:" + "a" * 64


def test_same_inputs_give_the_same_tag() -> None:
    first = images.base_inputs_digest(DOCKERFILE, REQUIREMENTS, BASE_ID)
    second = images.base_inputs_digest(bytes(DOCKERFILE), bytes(REQUIREMENTS), str(BASE_ID))
    assert first == second
    assert images.image_reference("base", first) == images.image_reference("base", second)


@pytest.mark.parametrize(
    ("dockerfile", "requirements", "base_id"),
    [
        (DOCKERFILE + b"USER 10001\n", REQUIREMENTS, BASE_ID),
        (DOCKERFILE, b"torch==2.13.0\nnumpy==2.4.6\n", BASE_ID),
        (DOCKERFILE, REQUIREMENTS, "sha256:" + "b" * 64),
    ],
    ids=["dockerfile", "requirements", "base-image"],
)
def test_any_changed_input_changes_the_tag(
    dockerfile: bytes, requirements: bytes, base_id: str
) -> None:
    original = images.base_inputs_digest(DOCKERFILE, REQUIREMENTS, BASE_ID)
    changed = images.base_inputs_digest(dockerfile, requirements, base_id)
    assert changed != original
    assert images.image_reference("base", changed) != images.image_reference("base", original)


def test_moving_bytes_between_inputs_changes_the_hash() -> None:
    assert images.inputs_digest([("a", b"xy"), ("b", b"z")]) != images.inputs_digest(
        [("a", b"x"), ("b", b"yz")]
    )


def test_minbase_tag_follows_the_script_and_the_mirror() -> None:
    script = b"debootstrap --variant=minbase bookworm\n"
    mirror = "http://deb.debian.org/debian"
    digest = images.minbase_inputs_digest(script, mirror)
    assert digest == images.minbase_inputs_digest(script, mirror)
    assert digest != images.minbase_inputs_digest(script + b"# edit\n", mirror)
    assert digest != images.minbase_inputs_digest(script, "http://mirror.example/debian")


def test_reference_is_repository_and_twelve_hex() -> None:
    digest = images.base_inputs_digest(DOCKERFILE, REQUIREMENTS, BASE_ID)
    assert re.fullmatch(r"sealroom/base:[0-9a-f]{12}", images.image_reference("base", digest))


def test_checked_in_requirements_are_fully_pinned() -> None:
    text = (images.default_images_dir() / "base" / "requirements.txt").read_text()
    pins = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    assert pins
    for pin in pins:
        assert re.fullmatch(r"[A-Za-z0-9_.-]+==[A-Za-z0-9_.]+", pin), pin
    assert "torch==2.13.0" in pins
    assert "numpy==2.4.6" in pins
    assert "safetensors==0.8.0" in pins


def test_dockerfile_takes_its_base_as_a_build_arg_and_drops_root() -> None:
    text = (images.default_images_dir() / "base" / "Dockerfile").read_text()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    assert lines[0] == "ARG BASE_IMAGE=python:3.11-slim-bookworm"
    froms = [ln for ln in lines if ln.startswith("FROM ")]
    assert len(froms) == 2
    assert all(ln.split()[1] == "${BASE_IMAGE}" for ln in froms)
    final_stage = lines[lines.index(froms[1]) :]
    assert not any("wheelhouse" in ln for ln in final_stage)
    assert "USER 10001:10001" in final_stage
    assert "WORKDIR /workspace" in final_stage


def test_default_cache_dir_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert images.default_cache_dir() == tmp_path / "sealroom"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert images.default_cache_dir() == tmp_path / "home" / ".cache" / "sealroom"


def test_wheelhouse_with_a_matching_stamp_is_reused(tmp_path: Path) -> None:
    requirements = tmp_path / "requirements.txt"
    requirements.write_bytes(REQUIREMENTS)
    wheelhouse = tmp_path / "wheelhouse"
    wheelhouse.mkdir()
    (wheelhouse / ".requirements.sha256").write_text(hashlib.sha256(REQUIREMENTS).hexdigest())
    logged: list[str] = []
    result = images.ensure_wheelhouse(
        requirements_file=requirements, wheelhouse=wheelhouse, log=logged.append
    )
    assert result == wheelhouse
    assert logged == []


def test_build_stream_errors_are_flagged() -> None:
    chunks = [
        {"stream": "Step 1/2 : FROM x\n ---> abc\n"},
        {"status": "Downloading"},
        {"error": "boom", "errorDetail": {"message": "boom"}},
    ]
    assert list(images._build_lines(chunks)) == [
        ("Step 1/2 : FROM x", False),
        (" ---> abc", False),
        ("Downloading", False),
        ("boom", True),
    ]


def test_demo_dataset_is_deterministic(tmp_path: Path) -> None:
    first = write_demo_dataset(tmp_path / "a", rows=200, seed=3)
    second = write_demo_dataset(tmp_path / "b", rows=200, seed=3)
    other = write_demo_dataset(tmp_path / "c", rows=200, seed=4)
    assert first.read_bytes() == second.read_bytes()
    assert first.read_bytes() != other.read_bytes()
    lines = first.read_text().splitlines()
    assert lines[0] == ",".join([*(f"f{i}" for i in range(16)), "label"])
    assert len(lines) == 201
    labels = {ln.rsplit(",", 1)[1] for ln in lines[1:]}
    assert labels == {"0", "1"}
    assert (tmp_path / "a" / "README.txt").read_text().startswith("Sealroom demo dataset")
