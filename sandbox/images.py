"""The offline build of the images sandboxes run: `sealroom/base` and the base it builds on.

Images are tagged by a hash of their build inputs, so an unchanged input set is never rebuilt;
Python packages come from a wheelhouse downloaded on the host, because builds have no network.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors

from sandbox.errors import EngineUnavailable, ImageBuildError

#: Label every image built here carries: its logical name, e.g. ``base``.
IMAGE_LABEL = "sealroom.image"
#: Label holding the full hash of the build inputs.
INPUTS_LABEL = "sealroom.inputs"
#: Label of the Dockerfile's build stage, removed once the final image exists.
STAGE_LABEL = "sealroom.stage=build"

REPOSITORY_PREFIX = "sealroom/"
MINBASE_NAME = "bookworm-minbase"
DEFAULT_DEBIAN_MIRROR = "http://deb.debian.org/debian"

_TAG_HEX = 12
_LOG_TAIL = 30
_BUILD_TIMEOUT_S = 3600
_WHEELHOUSE_STAMP = ".requirements.sha256"

Log = Callable[[str], None]


@dataclass(frozen=True)
class BuiltImage:
    """An image present in the local engine.

    ``name`` is the logical name (``base``), ``tag`` the full reference to run
    (``sealroom/base:<12 hex>``). ``digest`` is the image ID (``sha256:...``): with no registry
    there is no RepoDigest, and the ID is the content address the engine itself checks.
    """

    name: str
    tag: str
    image_id: str
    digest: str


def default_images_dir() -> Path:
    """The repository's ``images/`` directory (Dockerfiles, requirements, bootstrap scripts)."""
    return Path(__file__).resolve().parent.parent / "images"


def default_cache_dir() -> Path:
    """Where wheelhouses live between runs: ``${XDG_CACHE_HOME:-~/.cache}/sealroom``."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    root = Path(xdg) if xdg else Path.home() / ".cache"
    return root / "sealroom"


def inputs_digest(parts: Iterable[tuple[str, bytes]]) -> str:
    """SHA-256 over named inputs; each is length-prefixed so no two input sets collide."""
    h = hashlib.sha256()
    for label, data in parts:
        h.update(f"{label}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()


def base_inputs_digest(dockerfile: bytes, requirements: bytes, base_image_id: str) -> str:
    """The hash that names ``sealroom/base``: its Dockerfile, requirements and base image."""
    return inputs_digest(
        [
            ("Dockerfile", dockerfile),
            ("requirements.txt", requirements),
            ("base-image-id", base_image_id.encode()),
        ]
    )


def minbase_inputs_digest(script: bytes, mirror: str) -> str:
    """The hash that names the debootstrap base: the script (holding every parameter) and mirror."""
    return inputs_digest([("minbase.sh", script), ("mirror", mirror.encode())])


def image_reference(name: str, digest: str) -> str:
    """``sealroom/<name>:<first 12 hex of digest>``."""
    return f"{REPOSITORY_PREFIX}{name}:{digest[:_TAG_HEX]}"


def build_images(
    *,
    cache_dir: Path,
    images_dir: Path | None = None,
    base_image: str | None = None,
    client: docker.DockerClient | None = None,
    log: Log = print,
) -> dict[str, BuiltImage]:
    """Build (or find already built) every Sealroom image; return them by logical name.

    ``base_image`` selects a public base such as ``python:3.11-slim-bookworm``; without it a
    debootstrap base is made (or reused) so that no registry is needed.
    """
    images_dir = images_dir or default_images_dir()
    client = client or _connect()
    base_dir = images_dir / "base"
    dockerfile = _read(base_dir / "Dockerfile")
    requirements = _read(base_dir / "requirements.txt")

    if base_image is None:
        parent_ref = ensure_minbase(images_dir=images_dir, client=client, log=log).tag
    else:
        parent_ref = base_image
    parent_id = _local_image_id(client, parent_ref, pull=base_image is not None)

    digest = base_inputs_digest(dockerfile, requirements, parent_id)
    ref = image_reference("base", digest)
    existing = _image_if_present(client, "base", ref)
    if existing is not None:
        log(f"images: {ref} is up to date")
        return {"base": existing}

    wheelhouse = ensure_wheelhouse(
        requirements_file=base_dir / "requirements.txt",
        wheelhouse=cache_dir / "wheelhouse",
        log=log,
    )
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="build-", dir=cache_dir) as tmp:
        context = Path(tmp)
        (context / "Dockerfile").write_bytes(dockerfile)
        (context / "requirements.txt").write_bytes(requirements)
        _link_tree(wheelhouse, context / "wheelhouse")
        log(f"images: building {ref} FROM {parent_ref} ({parent_id[:19]})")
        started = time.monotonic()
        _docker_build(
            client,
            context=context,
            ref=ref,
            # The ID, not the tag: the build uses exactly the base the hash covers.
            buildargs={"BASE_IMAGE": parent_id},
            labels={IMAGE_LABEL: "base", INPUTS_LABEL: digest},
            log=log,
        )
    built = _image_if_present(client, "base", ref)
    if built is None:
        raise ImageBuildError(f"the build of {ref} finished but the image is missing")
    _remove_build_stages(client, log)
    log(f"images: built {ref} in {time.monotonic() - started:.0f} s")
    return {"base": built}


def ensure_minbase(
    *,
    images_dir: Path | None = None,
    client: docker.DockerClient | None = None,
    log: Log = print,
) -> BuiltImage:
    """The debootstrap bookworm base, made by ``images/bootstrap/minbase.sh`` if not present."""
    images_dir = images_dir or default_images_dir()
    client = client or _connect()
    script = images_dir / "bootstrap" / "minbase.sh"
    mirror = os.environ.get("SEALROOM_DEBIAN_MIRROR", DEFAULT_DEBIAN_MIRROR)
    ref = image_reference(MINBASE_NAME, minbase_inputs_digest(_read(script), mirror))
    existing = _image_if_present(client, MINBASE_NAME, ref)
    if existing is not None:
        return existing
    log(f"images: making the debootstrap base {ref} (about two minutes)")
    started = time.monotonic()
    _run_logged(["bash", str(script), ref], log=log, what="the debootstrap base")
    made = _image_if_present(client, MINBASE_NAME, ref)
    if made is None:
        raise ImageBuildError(f"{script.name} finished but {ref} is missing")
    log(f"images: made {ref} in {time.monotonic() - started:.0f} s")
    return made


def ensure_wheelhouse(*, requirements_file: Path, wheelhouse: Path, log: Log = print) -> Path:
    """Download the wheels ``requirements_file`` pins into ``wheelhouse``, unless already there.

    A stamp holding the hash of the requirements marks a complete download; a different hash
    empties the directory first so stale wheels never reach a build context.
    """
    wanted = hashlib.sha256(_read(requirements_file)).hexdigest()
    stamp = wheelhouse / _WHEELHOUSE_STAMP
    if stamp.is_file() and stamp.read_text().strip() == wanted:
        return wheelhouse
    if wheelhouse.exists():
        shutil.rmtree(wheelhouse)
    wheelhouse.mkdir(parents=True)
    log(f"images: downloading wheels into {wheelhouse}")
    # The host's pip (and its configuration) resolves; --only-binary keeps builds compiler-free.
    _run_logged(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--disable-pip-version-check",
            "--only-binary=:all:",
            "--dest",
            str(wheelhouse),
            "--requirement",
            str(requirements_file),
        ],
        log=log,
        what="the wheelhouse download",
    )
    stamp.write_text(wanted + "\n")
    return wheelhouse


def find_image(name: str, client: docker.DockerClient | None = None) -> BuiltImage | None:
    """The newest image labelled ``sealroom.image=<name>`` (``base`` or ``sealroom/base``)."""
    client = client or _connect()
    name = name.removeprefix(REPOSITORY_PREFIX)
    try:
        summaries: list[dict[str, Any]] = client.api.images(
            filters={"label": f"{IMAGE_LABEL}={name}"}
        )
    except docker.errors.APIError as exc:
        raise EngineUnavailable(
            "the container engine did not list images", detail=str(exc)
        ) from exc
    wanted_repo = f"{REPOSITORY_PREFIX}{name}:"
    for summary in sorted(summaries, key=lambda s: int(s.get("Created", 0)), reverse=True):
        tags = [t for t in summary.get("RepoTags") or [] if t.startswith(wanted_repo)]
        if tags:
            image_id = str(summary["Id"])
            return BuiltImage(name=name, tag=sorted(tags)[-1], image_id=image_id, digest=image_id)
    return None


def _connect() -> docker.DockerClient:
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        raise EngineUnavailable(
            "the container engine does not answer", detail=f"docker.from_env(): {exc}"
        ) from exc
    return client


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ImageBuildError(f"cannot read build input {path}", detail=str(exc)) from exc


def _image_if_present(client: docker.DockerClient, name: str, ref: str) -> BuiltImage | None:
    try:
        image = client.images.get(ref)
    except docker.errors.ImageNotFound:
        return None
    except docker.errors.APIError as exc:
        raise EngineUnavailable("the container engine did not answer", detail=str(exc)) from exc
    image_id = str(image.id)
    return BuiltImage(name=name, tag=ref, image_id=image_id, digest=image_id)


def _local_image_id(client: docker.DockerClient, ref: str, *, pull: bool) -> str:
    try:
        return str(client.images.get(ref).id)
    except docker.errors.ImageNotFound:
        if not pull:
            raise ImageBuildError(f"base image {ref} is not present") from None
    try:
        return str(client.images.pull(ref).id)
    except docker.errors.APIError as exc:
        raise ImageBuildError(
            f"base image {ref} is neither present nor pullable;"
            " omit --base-image to use the debootstrap base",
            detail=str(exc),
        ) from exc


def _remove_build_stages(client: docker.DockerClient, log: Log) -> None:
    """Drop the untagged build-stage images the wheelhouse and venv were assembled in.

    They would only speed up a rebuild with the same requirements, which the input hash makes
    rare, and each holds about 1.3 GB. One still in use by another build is left alone.
    """
    try:
        stages = client.api.images(filters={"label": STAGE_LABEL, "dangling": True}, quiet=True)
    except docker.errors.APIError as exc:
        log(f"images: could not list build stages: {exc}")
        return
    for image_id in stages:
        try:
            client.api.remove_image(image_id)
        except docker.errors.APIError as exc:
            log(f"images: kept build stage {str(image_id)[:19]}: {exc}")


def _link_tree(source: Path, target: Path) -> None:
    """Hard-link (or, across filesystems, copy) the files of ``source`` into ``target``."""
    target.mkdir()
    for path in sorted(source.iterdir()):
        if not path.is_file() or path.name.startswith("."):
            continue
        try:
            os.link(path, target / path.name)
        except OSError:
            shutil.copy2(path, target / path.name)


def _build_lines(chunks: Iterable[dict[str, Any]]) -> Iterator[tuple[str, bool]]:
    """Flatten the engine's build stream into (line, is_error) pairs."""
    for chunk in chunks:
        if "error" in chunk or "errorDetail" in chunk:
            detail = chunk.get("errorDetail") or {}
            message = str(chunk.get("error") or detail.get("message") or chunk)
            yield message.strip(), True
            continue
        text = chunk.get("stream") or chunk.get("status") or ""
        for line in str(text).splitlines():
            if line.strip():
                yield line.rstrip(), False


def _docker_build(
    client: docker.DockerClient,
    *,
    context: Path,
    ref: str,
    buildargs: dict[str, str],
    labels: dict[str, str],
    log: Log,
) -> None:
    tail: deque[str] = deque(maxlen=_LOG_TAIL)
    try:
        stream = client.api.build(
            path=str(context),
            tag=ref,
            buildargs=buildargs,
            labels=labels,
            rm=True,
            forcerm=True,
            pull=False,
            network_mode="none",
            decode=True,
            timeout=_BUILD_TIMEOUT_S,
        )
        for line, is_error in _build_lines(stream):
            tail.append(line)
            log(line)
            if is_error:
                raise ImageBuildError(f"building {ref} failed: {line}", detail="\n".join(tail))
    except docker.errors.DockerException as exc:
        tail.append(str(exc))
        raise ImageBuildError(f"building {ref} failed", detail="\n".join(tail)) from exc


def _run_logged(argv: Sequence[str], *, log: Log, what: str) -> None:
    tail: deque[str] = deque(maxlen=_LOG_TAIL)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        with subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        ) as proc:
            assert proc.stdout is not None
            for raw in proc.stdout:
                line = raw.rstrip()
                if line:
                    tail.append(line)
                    log(line)
            code = proc.wait()
    except OSError as exc:
        raise ImageBuildError(f"{what} could not start", detail=str(exc)) from exc
    if code != 0:
        raise ImageBuildError(f"{what} failed (exit {code})", detail="\n".join(tail))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m sandbox.images``: build the images, print one line per image."""
    parser = argparse.ArgumentParser(prog="python -m sandbox.images", description=__doc__)
    parser.add_argument("--cache-dir", type=Path, default=default_cache_dir())
    parser.add_argument("--images-dir", type=Path, default=None)
    parser.add_argument(
        "--base-image",
        default=os.environ.get("SEALROOM_BASE_IMAGE") or None,
        help="public base such as python:3.11-slim-bookworm (default: the debootstrap base)",
    )
    args = parser.parse_args(argv)
    try:
        built = build_images(
            cache_dir=args.cache_dir, images_dir=args.images_dir, base_image=args.base_image
        )
    except (ImageBuildError, EngineUnavailable) as exc:
        print(f"error: {exc.user_message}", file=sys.stderr)
        if exc.detail != exc.user_message:
            print(exc.detail, file=sys.stderr)
        return 1
    for name, image in sorted(built.items()):
        print(f"{name} {image.tag} {image.digest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
