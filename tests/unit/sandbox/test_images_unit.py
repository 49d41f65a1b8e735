"""Image tags, build inputs and the demo dataset, without Docker."""

from __future__ import annotations

import dataclasses
import hashlib
import re
from pathlib import Path
from typing import Any, cast

import pytest

from sandbox import images
from sandbox.errors import ImageBuildError
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


# --- sealroom/horovod and its cached wheel ------------------------------------------------

WHEEL_INPUTS = images.HorovodWheelInputs(
    sdist_sha256="92a43f5a94c43907a56805bad15f19700c62ffc83b7ca483f9e104e229f67ef0",
    build_script=b"sed -i 's/CMAKE_CXX_STANDARD 14/CMAKE_CXX_STANDARD 17/'\n",
    python_version="3.11.2",
    torch_version="2.13.0",
    openmpi_version="4.1.4-3+b1",
    build_debs=("cmake_3.25.1-1_amd64.deb", "libopenmpi-dev_4.1.4-3+b1_amd64.deb"),
)


def test_same_wheel_inputs_give_the_same_key_and_cache_path(tmp_path: Path) -> None:
    again = dataclasses.replace(WHEEL_INPUTS, build_debs=tuple(reversed(WHEEL_INPUTS.build_debs)))
    assert again.key() == WHEEL_INPUTS.key()
    assert again.cache_path(tmp_path) == WHEEL_INPUTS.cache_path(tmp_path)
    assert WHEEL_INPUTS.cache_path(tmp_path) == (
        tmp_path / "wheels" / f"horovod-{WHEEL_INPUTS.key()[:16]}"
    )


@pytest.mark.parametrize(
    "change",
    [
        {"sdist_sha256": "0" * 64},
        {"build_script": b"sed -i 's/CMAKE_CXX_STANDARD 14/CMAKE_CXX_STANDARD 20/'\n"},
        {"python_version": "3.11.7"},
        {"torch_version": "2.14.0"},
        {"openmpi_version": "4.1.5-1"},
        {"build_debs": ("cmake_3.25.1-2_amd64.deb", "libopenmpi-dev_4.1.4-3+b1_amd64.deb")},
    ],
    ids=lambda change: next(iter(change)),
)
def test_any_changed_wheel_input_changes_the_key(tmp_path: Path, change: dict[str, Any]) -> None:
    changed = dataclasses.replace(WHEEL_INPUTS, **change)
    assert changed.key() != WHEEL_INPUTS.key()
    assert changed.cache_path(tmp_path) != WHEEL_INPUTS.cache_path(tmp_path)


def test_horovod_tag_follows_every_input_file_and_the_base() -> None:
    files = {name: f"{name}\n".encode() for name in images.HOROVOD_INPUTS}
    digest = images.horovod_inputs_digest(files, BASE_ID)
    assert digest == images.horovod_inputs_digest(dict(reversed(files.items())), BASE_ID)
    assert digest != images.horovod_inputs_digest(files, "sha256:" + "b" * 64)
    for name in images.HOROVOD_INPUTS:
        edited = {**files, name: files[name] + b"# edit\n"}
        assert images.horovod_inputs_digest(edited, BASE_ID) != digest, name


def test_a_cached_wheel_is_reused_without_building(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    horovod_dir = images.default_images_dir() / "horovod"
    build_wheels = tmp_path / "build-wheels"
    build_wheels.mkdir()
    (build_wheels / images.HOROVOD_SDIST).write_bytes(b"the sdist")
    monkeypatch.setattr(
        images,
        "ensure_wheelhouse",
        lambda **kw: build_wheels if kw.get("binary_only") is False else tmp_path,
    )
    monkeypatch.setattr(
        images, "resolve_debs", lambda packages, **kw: ["libopenmpi-dev_4.1.4-3+b1_amd64.deb"]
    )
    monkeypatch.setattr(images, "_probe_versions", lambda client, image: ("3.11.2", "2.13.0"))

    def no_container(*args: object, **kwargs: object) -> None:
        raise AssertionError("a cached wheel must not be rebuilt")

    monkeypatch.setattr(images, "_run_build_container", no_container)
    monkeypatch.setattr(images, "download_debs", no_container)
    inputs = images.HorovodWheelInputs(
        sdist_sha256=hashlib.sha256(b"the sdist").hexdigest(),
        build_script=(horovod_dir / "build-wheel.sh").read_bytes(),
        python_version="3.11.2",
        torch_version="2.13.0",
        openmpi_version="4.1.4-3+b1",
        build_debs=("libopenmpi-dev_4.1.4-3+b1_amd64.deb",),
    )
    cached = inputs.cache_path(tmp_path / "cache")
    cached.mkdir(parents=True)
    wheel = cached / "horovod-0.28.1-cp311-cp311-linux_x86_64.whl"
    wheel.write_bytes(b"wheel")
    base = images.BuiltImage("base", "sealroom/base:x", BASE_ID, BASE_ID)
    logged: list[str] = []

    found = images.ensure_horovod_wheel(
        base,
        cache_dir=tmp_path / "cache",
        horovod_dir=horovod_dir,
        status_file=tmp_path / "status",
        client=cast(Any, object()),
        log=logged.append,
    )

    assert found == wheel
    assert any("from the cache" in line for line in logged), logged


def test_package_lists_and_deb_versions_parse() -> None:
    text = b"# comment\nopenmpi-bin\n\nlibopenmpi3  # runtime\n"
    assert images._package_list(text) == ["openmpi-bin", "libopenmpi3"]
    debs = ["libopenmpi3_4.1.4-3+b1_amd64.deb", "libc6_2%3a2.36-9_amd64.deb"]
    assert images._deb_version(debs, "libopenmpi3") == "4.1.4-3+b1"
    assert images._deb_version(debs, "libc6") == "2:2.36-9"
    with pytest.raises(ImageBuildError):
        images._deb_version(debs, "libopenmpi-dev")


def test_horovod_inputs_are_pinned_and_the_image_drops_root() -> None:
    horovod_dir = images.default_images_dir() / "horovod"
    for name in images.HOROVOD_INPUTS:
        assert (horovod_dir / name).is_file(), name
    pins = [
        ln.strip()
        for ln in (horovod_dir / "requirements.txt").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    assert pins
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+==[A-Za-z0-9_.]+", pin) for pin in pins), pins
    build = (horovod_dir / "build-requirements.txt").read_text()
    assert re.search(r"^horovod==0\.28\.1 --hash=sha256:[0-9a-f]{64}$", build, re.M)
    lines = [
        ln.strip()
        for ln in (horovod_dir / "Dockerfile").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    assert [ln for ln in lines if ln.startswith("FROM ")] == ["FROM ${BASE_IMAGE}"]
    assert [ln for ln in lines if ln.startswith("USER ")][-1] == "USER 10001:10001"


def test_a_changed_in_sandbox_helper_changes_the_tag() -> None:
    # sealroom.py (log_metrics) is copied into the image: a new helper is a new image.
    original = images.base_inputs_digest(DOCKERFILE, REQUIREMENTS, BASE_ID, helper=b"v1")
    assert images.base_inputs_digest(DOCKERFILE, REQUIREMENTS, BASE_ID, helper=b"v2") != original


# --- sealroom/sacroml, the release gate's model attacks -------------------------------------


def test_sacroml_tag_follows_every_input_file_and_the_base() -> None:
    files = {name: f"{name}\n".encode() for name in images.SACROML_INPUTS}
    digest = images.sacroml_inputs_digest(files, BASE_ID)
    assert digest == images.sacroml_inputs_digest(dict(reversed(files.items())), BASE_ID)
    assert digest != images.sacroml_inputs_digest(files, "sha256:" + "b" * 64)
    for name in images.SACROML_INPUTS:  # the runner too: a new runner is a new image
        edited = {**files, name: files[name] + b"# edited\n"}
        assert images.sacroml_inputs_digest(edited, BASE_ID) != digest, name


def test_sacroml_inputs_are_pinned_leave_out_cuda_and_the_image_drops_root() -> None:
    sacroml_dir = images.default_images_dir() / "sacroml"
    for name in images.SACROML_INPUTS:
        assert (sacroml_dir / name).is_file(), name
    pins = [
        ln.strip()
        for ln in (sacroml_dir / "requirements.txt").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    assert "sacroml==2.0.1" in pins
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+==[A-Za-z0-9_.]+", pin) for pin in pins), pins
    names = {pin.split("==")[0].lower() for pin in pins}
    assert not any(name.startswith("nvidia") for name in names)
    assert "torch" not in names  # the base's own, exactly 2.13.0 (CPU)
    lines = [
        ln.strip()
        for ln in (sacroml_dir / "Dockerfile").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    assert [ln for ln in lines if ln.startswith("FROM ")] == [
        "FROM ${BASE_IMAGE} AS build", "FROM ${BASE_IMAGE}"]
    assert "--no-deps" in (sacroml_dir / "Dockerfile").read_text()
    assert [ln for ln in lines if ln.startswith("USER ")][-1] == "USER 10001:10001"


def test_an_exact_wheelhouse_is_made_by_pip_wheel_without_dependencies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    requirements = tmp_path / "requirements.txt"
    requirements.write_bytes(b"fpdf==1.7.2\n")
    ran: list[list[str]] = []
    monkeypatch.setattr(images, "_run_logged", lambda argv, **kw: ran.append(list(argv)))
    wheelhouse = images.ensure_wheelhouse(
        requirements_file=requirements, wheelhouse=tmp_path / "wh", exactly_listed=True,
        log=lambda line: None)
    [argv] = ran
    assert argv[3:4] == ["wheel"]  # an sdist (fpdf 1.7.2 has no wheel) becomes a wheel
    assert "--no-deps" in argv and "--only-binary=:all:" not in argv
    assert argv[argv.index("--wheel-dir") + 1] == str(wheelhouse)
    assert (wheelhouse / ".requirements.sha256").is_file()


def test_an_up_to_date_sacroml_image_is_reused_without_fetching_a_wheel(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    base = images.BuiltImage(name="base", tag="sealroom/base:aaaaaaaaaaaa", image_id=BASE_ID,
                             digest=BASE_ID)
    sacroml_dir = images.default_images_dir() / "sacroml"
    files = {name: (sacroml_dir / name).read_bytes() for name in images.SACROML_INPUTS}
    wanted = images.image_reference("sacroml", images.sacroml_inputs_digest(files, BASE_ID))
    present = images.BuiltImage(name="sacroml", tag=wanted, image_id="sha256:" + "c" * 64,
                                digest="sha256:" + "c" * 64)
    asked: list[str] = []

    def image_if_present(client: object, name: str, ref: str) -> images.BuiltImage:
        asked.append(ref)
        return present

    def no_build(**kwargs: object) -> None:
        raise AssertionError("an up-to-date image must not be rebuilt")

    monkeypatch.setattr(images, "_image_if_present", image_if_present)
    monkeypatch.setattr(images, "ensure_wheelhouse", no_build)
    logged: list[str] = []
    found = images.ensure_sacroml_image(
        base, cache_dir=Path("/nonexistent"), images_dir=images.default_images_dir(),
        client=cast(Any, None), log=logged.append)
    assert found == present
    assert asked == [wanted]
    assert logged == [f"images: {wanted} is up to date"]
