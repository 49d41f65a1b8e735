"""The offline build of the images sandboxes run: `sealroom/base`, `sealroom/horovod`,
`sealroom/sacroml` (the release gate's model attacks) and the debootstrap base they build on.

Images are tagged by a hash of their build inputs, so an unchanged input set is never rebuilt;
Python packages come from a wheelhouse downloaded on the host, and Debian packages from .debs
the host's apt resolves against the parent image's own package list, because builds have no
network. The horovod wheel (PyPI has only an sdist) is compiled once in a throwaway container
made from `sealroom/base` itself, so it is built against exactly the Python, torch and OpenMPI
the image runs, with no compiler on the host or in any image; it is cached outside the
repository under a hash of those inputs and reused by every later build.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
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

#: Label of the throwaway containers a build runs (package lists, probes, the wheel build).
BUILD_CONTAINER_LABEL = "sealroom.build"

REPOSITORY_PREFIX = "sealroom/"
MINBASE_NAME = "bookworm-minbase"
DEFAULT_DEBIAN_MIRROR = "http://deb.debian.org/debian"
#: The Debian release the images are made from; the host's apt resolves their packages.
DEBIAN_CODENAME = "bookworm"
#: Files of ``images/horovod/`` the horovod image's tag covers (the wheel's inputs included).
HOROVOD_INPUTS = (
    "Dockerfile",
    "requirements.txt",
    "packages.txt",
    "build-wheel.sh",
    "build-requirements.txt",
    "build-packages.txt",
    "sealroom-mpi",
)
HOROVOD_SDIST = "horovod-0.28.1.tar.gz"
#: Files of ``images/sacroml/`` the sacroml image's tag covers (its runner included).
SACROML_INPUTS = ("Dockerfile", "requirements.txt", "sealroom_attack.py")

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


def base_inputs_digest(dockerfile: bytes, requirements: bytes, base_image_id: str, *,
                       helper: bytes = b"") -> str:
    """The hash that names ``sealroom/base``: its Dockerfile, requirements, the in-sandbox
    helper module (``sealroom.py``) and base image."""
    return inputs_digest(
        [
            ("Dockerfile", dockerfile),
            ("requirements.txt", requirements),
            ("sealroom.py", helper),
            ("base-image-id", base_image_id.encode()),
        ]
    )


def horovod_inputs_digest(files: Mapping[str, bytes], base_image_id: str) -> str:
    """The hash that names ``sealroom/horovod``: every file of ``images/horovod/`` and its base."""
    return inputs_digest([*sorted(files.items()), ("base-image-id", base_image_id.encode())])


@dataclass(frozen=True)
class HorovodWheelInputs:
    """Everything the compiled horovod wheel depends on; its hash names the cached wheel.

    The build script holds the C++17 patch and every build flag; ``build_debs`` names each
    build package with its version (``libopenmpi-dev_4.1.4-3+b1_amd64.deb``), so a point
    release of the compiler or of OpenMPI yields a new key as well.
    """

    sdist_sha256: str
    build_script: bytes
    python_version: str
    torch_version: str
    openmpi_version: str
    build_debs: tuple[str, ...]

    def key(self) -> str:
        return inputs_digest(
            [
                ("sdist-sha256", self.sdist_sha256.encode()),
                ("build-wheel.sh", self.build_script),
                ("python", self.python_version.encode()),
                ("torch", self.torch_version.encode()),
                ("openmpi", self.openmpi_version.encode()),
                ("build-debs", "\n".join(sorted(self.build_debs)).encode()),
            ]
        )

    def cache_path(self, cache_dir: Path) -> Path:
        """``<cache>/wheels/horovod-<first 16 hex of the key>/``, holding the one wheel."""
        return cache_dir / "wheels" / f"horovod-{self.key()[:16]}"


def sacroml_inputs_digest(files: Mapping[str, bytes], base_image_id: str) -> str:
    """The hash that names ``sealroom/sacroml``: every input file of ``images/sacroml/`` and
    its base."""
    return inputs_digest([*sorted(files.items()), ("base-image-id", base_image_id.encode())])


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
    debootstrap base is made (or reused) so that no registry is needed. ``sealroom/base`` is
    built first and ``sealroom/horovod`` and ``sealroom/sacroml`` from it, each skipped when
    its inputs are unchanged.
    """
    images_dir = images_dir or default_images_dir()
    client = client or _connect()
    base = ensure_base_image(
        cache_dir=cache_dir, images_dir=images_dir, base_image=base_image, client=client, log=log
    )
    horovod = ensure_horovod_image(
        base, cache_dir=cache_dir, images_dir=images_dir, client=client, log=log
    )
    sacroml = ensure_sacroml_image(
        base, cache_dir=cache_dir, images_dir=images_dir, client=client, log=log
    )
    return {"base": base, "horovod": horovod, "sacroml": sacroml}


def ensure_base_image(
    *,
    cache_dir: Path,
    images_dir: Path,
    base_image: str | None,
    client: docker.DockerClient,
    log: Log = print,
) -> BuiltImage:
    """``sealroom/base``: Python 3.11 with CPU torch, from the debootstrap or a public base."""
    base_dir = images_dir / "base"
    dockerfile = _read(base_dir / "Dockerfile")
    requirements = _read(base_dir / "requirements.txt")
    helper = _read(base_dir / "sealroom.py")

    if base_image is None:
        parent_ref = ensure_minbase(images_dir=images_dir, client=client, log=log).tag
    else:
        parent_ref = base_image
    parent_id = _local_image_id(client, parent_ref, pull=base_image is not None)

    digest = base_inputs_digest(dockerfile, requirements, parent_id, helper=helper)
    ref = image_reference("base", digest)
    existing = _image_if_present(client, "base", ref)
    if existing is not None:
        log(f"images: {ref} is up to date")
        return existing

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
        (context / "sealroom.py").write_bytes(helper)
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
    return built


def ensure_horovod_image(
    base: BuiltImage,
    *,
    cache_dir: Path,
    images_dir: Path,
    client: docker.DockerClient,
    log: Log = print,
) -> BuiltImage:
    """``sealroom/horovod``: the base plus OpenMPI, the SSH launcher and horovod 0.28.1.

    On a cold build: the runtime and build wheelhouses are downloaded on the host, the
    horovod wheel is taken from the cache or compiled (:func:`ensure_horovod_wheel`), the
    Debian packages are resolved against the base's own package list and downloaded, and
    the image is built with no network.
    """
    horovod_dir = images_dir / "horovod"
    files = {name: _read(horovod_dir / name) for name in HOROVOD_INPUTS}
    digest = horovod_inputs_digest(files, base.image_id)
    ref = image_reference("horovod", digest)
    existing = _image_if_present(client, "horovod", ref)
    if existing is not None:
        log(f"images: {ref} is up to date")
        return existing

    _require_debian_host()
    started = time.monotonic()
    status_file_bytes = _image_file(client, base.image_id, "/var/lib/dpkg/status")
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="build-", dir=cache_dir) as tmp:
        work = Path(tmp)
        status_file = work / "dpkg-status"
        status_file.write_bytes(status_file_bytes)
        wheel = ensure_horovod_wheel(
            base,
            cache_dir=cache_dir,
            horovod_dir=horovod_dir,
            status_file=status_file,
            client=client,
            log=log,
        )
        context = work / "context"
        context.mkdir()
        for name in ("Dockerfile", "requirements.txt", "sealroom-mpi"):
            (context / name).write_bytes(files[name])
        runtime_wheels = ensure_wheelhouse(
            requirements_file=horovod_dir / "requirements.txt",
            wheelhouse=cache_dir / "wheelhouse-horovod",
            log=log,
        )
        _link_tree(runtime_wheels, context / "wheelhouse")
        _link_file(wheel, context / "wheelhouse" / wheel.name)
        download_debs(
            _package_list(files["packages.txt"]),
            status_file=status_file,
            dest=context / "debs",
            log=log,
        )
        log(f"images: building {ref} FROM {base.tag}")
        _docker_build(
            client,
            context=context,
            ref=ref,
            buildargs={"BASE_IMAGE": base.image_id},
            labels={IMAGE_LABEL: "horovod", INPUTS_LABEL: digest},
            log=log,
        )
    return _present_after(client, "horovod", ref, started, log=log,
                          missing=f"the build of {ref} finished but the image is missing")


def ensure_sacroml_image(
    base: BuiltImage,
    *,
    cache_dir: Path,
    images_dir: Path,
    client: docker.DockerClient,
    log: Log = print,
) -> BuiltImage:
    """``sealroom/sacroml``: the base plus sacroml 2.0.1 and ``sealroom-attack``, its runner.

    On a cold build the wheels ``requirements.txt`` pins (and nothing they depend on) are
    fetched on the host, fpdf's sdist made into a wheel there, and the image built with no
    network.
    """
    sacroml_dir = images_dir / "sacroml"
    files = {name: _read(sacroml_dir / name) for name in SACROML_INPUTS}
    digest = sacroml_inputs_digest(files, base.image_id)
    ref = image_reference("sacroml", digest)
    existing = _image_if_present(client, "sacroml", ref)
    if existing is not None:
        log(f"images: {ref} is up to date")
        return existing

    started = time.monotonic()
    wheels = ensure_wheelhouse(
        requirements_file=sacroml_dir / "requirements.txt",
        wheelhouse=cache_dir / "wheelhouse-sacroml",
        exactly_listed=True,
        log=log,
    )
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="build-", dir=cache_dir) as tmp:
        context = Path(tmp)
        for name, data in files.items():
            (context / name).write_bytes(data)
        _link_tree(wheels, context / "wheelhouse")
        log(f"images: building {ref} FROM {base.tag}")
        _docker_build(
            client,
            context=context,
            ref=ref,
            buildargs={"BASE_IMAGE": base.image_id},
            labels={IMAGE_LABEL: "sacroml", INPUTS_LABEL: digest},
            log=log,
        )
    image = _present_after(client, "sacroml", ref, started, log=log,
                           missing=f"the build of {ref} finished but the image is missing")
    _remove_build_stages(client, log)
    return image


def ensure_horovod_wheel(
    base: BuiltImage,
    *,
    cache_dir: Path,
    horovod_dir: Path,
    status_file: Path,
    client: docker.DockerClient,
    log: Log = print,
) -> Path:
    """The horovod wheel for ``base``, from the cache or compiled once and then cached.

    It is compiled by ``build-wheel.sh`` in a throwaway container made from ``base`` (as
    root, with no network), with the build packages (compiler, CMake, OpenMPI headers)
    installed there from .debs; neither the host nor any image keeps a compiler. The wheel
    lands in ``<cache>/wheels/horovod-<key>/`` only once complete, so an interrupted build
    leaves nothing that a later build would take for a wheel.
    """
    build_wheels = ensure_wheelhouse(
        requirements_file=horovod_dir / "build-requirements.txt",
        wheelhouse=cache_dir / "wheelhouse-horovod-build",
        binary_only=False,
        log=log,
    )
    build_packages = _package_list(_read(horovod_dir / "build-packages.txt"))
    build_debs = resolve_debs(build_packages, status_file=status_file, log=log)
    python_version, torch_version = _probe_versions(client, base)
    inputs = HorovodWheelInputs(
        sdist_sha256=_sha256_file(build_wheels / HOROVOD_SDIST),
        build_script=_read(horovod_dir / "build-wheel.sh"),
        python_version=python_version,
        torch_version=torch_version,
        openmpi_version=_deb_version(build_debs, "libopenmpi-dev"),
        build_debs=tuple(build_debs),
    )
    cached = inputs.cache_path(cache_dir)
    wheels = sorted(cached.glob("horovod-*.whl")) if cached.is_dir() else []
    if wheels:
        log(f"images: horovod wheel {wheels[0].name} from the cache ({cached.name})")
        return wheels[0]

    log(
        f"images: compiling the horovod wheel (Python {python_version}, torch {torch_version},"
        f" OpenMPI {inputs.openmpi_version}); about ten minutes, once"
    )
    started = time.monotonic()
    runtime_wheels = ensure_wheelhouse(
        requirements_file=horovod_dir / "requirements.txt",
        wheelhouse=cache_dir / "wheelhouse-horovod",
        log=log,
    )
    with tempfile.TemporaryDirectory(prefix="wheel-", dir=cache_dir) as tmp:
        work = Path(tmp)
        inputs_dir = work / "in"
        inputs_dir.mkdir()
        (inputs_dir / "build-wheel.sh").write_bytes(inputs.build_script)
        _link_tree(build_wheels, inputs_dir / "wheelhouse")
        for path in sorted(runtime_wheels.iterdir()):
            if path.is_file() and not path.name.startswith("."):
                _link_file(path, inputs_dir / "wheelhouse" / path.name)
        download_debs(build_packages, status_file=status_file, dest=inputs_dir / "debs", log=log)
        out = work / "out"
        out.mkdir()
        _run_build_container(
            client,
            base.image_id,
            ["bash", "/in/build-wheel.sh"],
            volumes={
                str(inputs_dir): {"bind": "/in", "mode": "ro"},
                str(out): {"bind": "/out", "mode": "rw"},
            },
            environment={"OUT_OWNER": f"{os.getuid()}:{os.getgid()}"},
            log=log,
            what="the horovod wheel build",
        )
        built = sorted(out.glob("horovod-*.whl"))
        if len(built) != 1:
            raise ImageBuildError(
                "the horovod wheel build finished without exactly one wheel",
                detail=f"found {[p.name for p in out.iterdir()]}",
            )
        cached.parent.mkdir(parents=True, exist_ok=True)
        raced = sorted(cached.glob("horovod-*.whl")) if cached.is_dir() else []
        if raced:  # a concurrent build cached the same inputs first: keep its wheel
            return raced[0]
        if cached.exists():  # an empty directory left by hand: never a wheel
            shutil.rmtree(cached)
        os.replace(out, cached)
    log(f"images: compiled and cached the horovod wheel in {time.monotonic() - started:.0f} s")
    return cached / built[0].name


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
    return _present_after(client, MINBASE_NAME, ref, started, log=log, verb="made",
                          missing=f"{script.name} finished but {ref} is missing")


def ensure_wheelhouse(
    *,
    requirements_file: Path,
    wheelhouse: Path,
    binary_only: bool = True,
    exactly_listed: bool = False,
    log: Log = print,
) -> Path:
    """Download the wheels ``requirements_file`` pins into ``wheelhouse``, unless already there.

    A stamp holding the hash of the requirements marks a complete download; a different hash
    empties the directory first so stale wheels never reach a build context. With
    ``binary_only=False`` exactly the listed files are fetched (sdists too, no dependencies),
    for a hash-pinned build requirements file. With ``exactly_listed`` exactly the listed
    packages are fetched as wheels (no dependencies), an sdist made into a wheel on the host.
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
    selection = ["--only-binary=:all:"] if binary_only else ["--no-deps"]
    if exactly_listed:  # `pip wheel` saves a wheel as it is and builds one from an sdist
        command, selection = ["wheel", "--wheel-dir"], ["--no-deps"]
    else:
        command = ["download", "--dest"]
    _run_logged(
        [
            sys.executable,
            "-m",
            "pip",
            command[0],
            "--disable-pip-version-check",
            *selection,
            command[1],
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


def resolve_debs(packages: Sequence[str], *, status_file: Path, log: Log = print) -> list[str]:
    """The .deb files (``name_version_arch.deb``) that install ``packages`` on an image.

    ``status_file`` is the image's dpkg status; the host's apt resolves, downloading nothing.
    """
    with tempfile.TemporaryDirectory(prefix="apt-") as tmp:
        output = _apt_get(
            ["install", "--print-uris", *packages],
            status_file=status_file,
            archives=Path(tmp),
            log=log,
            what="resolving " + " ".join(packages),
        )
    debs = sorted(
        line.split()[1] for line in output.splitlines() if line.startswith("'") and " " in line
    )
    if not debs:
        raise ImageBuildError(f"apt resolved no packages for {' '.join(packages)}", detail=output)
    return debs


def download_debs(
    packages: Sequence[str], *, status_file: Path, dest: Path, log: Log = print
) -> list[Path]:
    """Download into ``dest`` every .deb installing ``packages`` on the image needs."""
    (dest / "partial").mkdir(parents=True, exist_ok=True)
    _apt_get(
        ["install", "--download-only", *packages],
        status_file=status_file,
        archives=dest,
        log=log,
        what="downloading " + " ".join(packages),
    )
    shutil.rmtree(dest / "partial", ignore_errors=True)
    (dest / "lock").unlink(missing_ok=True)
    debs = sorted(dest.glob("*.deb"))
    log(f"images: {len(debs)} Debian packages for {' '.join(packages)}")
    return debs


def _apt_get(args: Sequence[str], *, status_file: Path, archives: Path, log: Log, what: str) -> str:
    """Run the host's apt-get as if ``status_file`` were the installed-package list.

    The host must run the images' Debian release. A failure (usually package lists older
    than the mirror) is retried once after ``apt-get update`` when running as root.
    """
    (archives / "partial").mkdir(parents=True, exist_ok=True)
    argv = [
        "apt-get",
        "-q",
        "-y",
        "--no-install-recommends",
        "-o",
        f"Dir::State::status={status_file}",
        "-o",
        f"Dir::Cache::archives={archives}",
        # Only files under archives are written, so the host's dpkg lock is not needed.
        "-o",
        "Debug::NoLocking=1",
        *args,
    ]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C"}
    for attempt in (1, 2):
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, env=env, check=False, timeout=1800
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ImageBuildError(f"{what} with apt-get could not run", detail=str(exc)) from exc
        if done.returncode == 0:
            return done.stdout
        if attempt == 1 and os.geteuid() == 0:
            log(f"images: {what} failed; refreshing the host's package lists")
            _run_logged(["apt-get", "update", "-qq"], log=log, what="apt-get update")
            continue
        raise ImageBuildError(
            f"{what} with apt-get failed (exit {done.returncode})",
            detail=(done.stdout + done.stderr)[-4000:],
        )
    raise AssertionError("unreachable")


def _require_debian_host() -> None:
    try:
        release = Path("/etc/os-release").read_text()
    except OSError:
        release = ""
    fields = dict(line.split("=", 1) for line in release.splitlines() if "=" in line)
    codename = fields.get("VERSION_CODENAME", "").strip('"')
    if codename != DEBIAN_CODENAME or shutil.which("apt-get") is None:
        raise ImageBuildError(
            f"the horovod image's Debian packages are resolved by the host's apt, so the host"
            f" must run Debian {DEBIAN_CODENAME} like the images (found {codename or 'none'})"
        )


def _package_list(text: bytes) -> list[str]:
    """Package names of a packages file: one a line, ``#`` starts a comment."""
    names = [line.split("#", 1)[0].strip() for line in text.decode().splitlines()]
    return [name for name in names if name]


def _deb_version(debs: Iterable[str], package: str) -> str:
    for deb in debs:
        name, _, rest = deb.partition("_")
        if name == package:
            return rest.rsplit("_", 1)[0].replace("%3a", ":")
    raise ImageBuildError(f"apt did not resolve {package}", detail="\n".join(debs))


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    try:
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError as exc:
        raise ImageBuildError(f"cannot read {path}", detail=str(exc)) from exc
    return h.hexdigest()


def _image_file(client: docker.DockerClient, image_id: str, path: str) -> bytes:
    """One file of an image, read from a created (never started) container."""
    try:
        container = client.containers.create(
            image_id, ["true"], network_disabled=True, labels={BUILD_CONTAINER_LABEL: "read"}
        )
        try:
            chunks, _ = container.get_archive(path)
            with tarfile.open(fileobj=io.BytesIO(b"".join(chunks))) as archive:
                member = archive.extractfile(os.path.basename(path))
                if member is None:
                    raise ImageBuildError(f"{path} in {image_id[:19]} is not a file")
                return member.read()
        finally:
            container.remove(force=True)
    except docker.errors.DockerException as exc:
        raise ImageBuildError(f"cannot read {path} from {image_id[:19]}", detail=str(exc)) from exc


def _probe_versions(client: docker.DockerClient, image: BuiltImage) -> tuple[str, str]:
    """The Python and torch versions inside ``image`` (sealed: no network, uid 10001)."""
    probe = (
        "import importlib.metadata as m, platform;"
        "print(platform.python_version(), m.version('torch'))"
    )
    lines: list[str] = []
    _run_build_container(
        client,
        image.image_id,
        ["python", "-c", probe],
        log=lines.append,
        what="the version probe",
        user="10001:10001",
    )
    words = lines[-1].split() if lines else []
    if len(words) != 2:
        raise ImageBuildError("the version probe printed no versions", detail="\n".join(lines))
    return words[0], words[1]


def _run_build_container(
    client: docker.DockerClient,
    image_id: str,
    command: list[str],
    *,
    log: Log,
    what: str,
    user: str = "0:0",
    volumes: dict[str, dict[str, str]] | None = None,
    environment: dict[str, str] | None = None,
) -> None:
    """Run a throwaway container with no network, streaming its output into ``log``."""
    tail: deque[str] = deque(maxlen=_LOG_TAIL)
    try:
        container = client.containers.run(
            image_id,
            command,
            detach=True,
            user=user,
            network_mode="none",
            labels={BUILD_CONTAINER_LABEL: "run"},
            volumes=volumes or {},
            environment=environment or {},
        )
        try:
            for raw in container.logs(stream=True, follow=True):
                for line in raw.decode(errors="replace").splitlines():
                    if line.strip():
                        tail.append(line.rstrip())
                        log(line.rstrip())
            code = int(container.wait(timeout=_BUILD_TIMEOUT_S)["StatusCode"])
        finally:
            container.remove(force=True)
    except docker.errors.DockerException as exc:
        raise ImageBuildError(f"{what} could not run", detail=str(exc)) from exc
    if code != 0:
        raise ImageBuildError(f"{what} failed (exit {code})", detail="\n".join(tail))


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


def _present_after(client: docker.DockerClient, name: str, ref: str, started: float, *,
                   log: Log, missing: str, verb: str = "built") -> BuiltImage:
    """The image a build just made, with how long it took; `missing` if the engine lacks it."""
    image = _image_if_present(client, name, ref)
    if image is None:
        raise ImageBuildError(missing)
    log(f"images: {verb} {ref} in {time.monotonic() - started:.0f} s")
    return image


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
        _link_file(path, target / path.name)


def _link_file(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


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
