"""The release's SLSA provenance: an in-toto Statement v1 saying which files came out of which
sandbox, image, datasets and code, under which policy, asked for by whom and approved by
whom, and the lineage of earlier sandboxes it built on; and its DSSE envelope, signed with
the gate's key, as `provenance.intoto.jsonl`.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from sandbox.gate.errors import GateError
from sandbox.gate.keys import keyid_of

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
SLSA_PROVENANCE_V1 = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "https://sealroom.dev/release/v1"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
PROVENANCE_FILE = "provenance.intoto.jsonl"

_HEX = re.compile(r"[0-9a-f]+")
_DIGEST_BITS = {"sha256": 256, "sha384": 384, "sha512": 512}
#: Sandbox ids and dataset names, as `sandbox/spec.py` admits them.
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
#: A dataset version: a number, or a short label.
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


class ProvenanceError(GateError):
    """Provenance that cannot be built, parsed, or whose signature does not hold."""

    status = 500


class ProvenanceSignatureError(ProvenanceError):
    """The DSSE envelope is not signed by the given key."""


def build_provenance(
    subjects: Sequence[tuple[str, str]],
    *,
    release_id: str,
    sandbox_spec: Mapping[str, Any],
    image_digest: str,
    datasets: Sequence[Mapping[str, Any]],
    code_digest: str,
    policy_version: int | str,
    requester: str,
    approvers: Sequence[str],
    checks: Mapping[str, Any],
    started_on: datetime | str,
    finished_on: datetime | str,
    builder_id: str,
    inputs: Sequence[Mapping[str, str]] = (),
    project: str = "",
    project_parent: str = "",
    ancestors: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """An in-toto Statement v1 with a SLSA provenance v1 predicate for these released files.

    `subjects` are (release name, sha256 hex); digests elsewhere are `algorithm:hex` (a bare
    64-hex value is taken as sha256). A dataset is `{"name", "digest"}`, with a `"version"`
    where it has one. Timestamps are aware datetimes or RFC 3339 text. What the requester
    chose goes in externalParameters; what the gate decided (policy, approvers, checks) in
    internalParameters.

    A sandbox that built on earlier ones names them: `inputs` (`{"sandbox", "digest"}`, the
    outputs it mounted under /inputs), the `project` whose workspace it used and the
    `project_parent` whose workspace it continued, and `ancestors`, every earlier sandbox
    they lead to, recursively (see `LineageNode.from_mapping`). They go in
    externalParameters as `lineage` and each digest also in resolvedDependencies; a lineage
    that is not a DAG of exactly these sandboxes raises `ProvenanceError`.
    """
    names = [name for name, _ in subjects]
    if not names:
        raise ProvenanceError("a release needs at least one file")
    if len(set(names)) != len(names):
        raise ProvenanceError("a release names the same file twice")
    lineage = Lineage.build(inputs=inputs, project=project, project_parent=project_parent,
                            ancestors=ancestors,
                            released=str(sandbox_spec.get("sandbox_id", "")))
    dependencies: list[dict[str, Any]] = [
        {"name": "image", "uri": "sealroom:image", "digest": digest_set(image_digest)},
    ]
    for dataset in datasets:
        label = DatasetVersion.from_mapping(dataset, "a dataset of the sandbox").label
        dependencies.append({"name": f"dataset:{label}", "uri": f"sealroom:dataset/{label}",
                             "digest": digest_set(dataset["digest"])})
    dependencies.append({"name": "code", "uri": "sealroom:code",
                         "digest": digest_set(code_digest)})
    dependencies.extend(lineage.dependencies())
    external: dict[str, Any] = {
        "releaseRequest": release_id,
        "requester": requester,
        "files": sorted(names),
        "sandboxSpec": dict(sandbox_spec),
    }
    if not lineage.empty:  # statements of sandboxes that built on nothing read as before
        external["lineage"] = lineage.to_dict()
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": name, "digest": {"sha256": _hex(sha256, 256)}}
                    for name, sha256 in sorted(subjects)],
        "predicateType": SLSA_PROVENANCE_V1,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": external,
                "internalParameters": {
                    "policyVersion": policy_version,
                    "approvers": list(approvers),
                    "checks": dict(checks),
                },
                "resolvedDependencies": dependencies,
            },
            "runDetails": {
                "builder": {"id": builder_id},
                "metadata": {
                    "invocationId": release_id,
                    "startedOn": _rfc3339(started_on),
                    "finishedOn": _rfc3339(finished_on),
                },
            },
        },
    }


def digest_set(digest: str) -> dict[str, str]:
    """`sha256:ab…` (or bare sha256 hex) as an in-toto DigestSet `{"sha256": "ab…"}`."""
    algorithm, _, value = digest.rpartition(":")
    algorithm = algorithm or "sha256"
    if algorithm not in _DIGEST_BITS:
        raise ProvenanceError(f"unsupported digest algorithm in {digest!r}")
    return {algorithm: _hex(value, _DIGEST_BITS[algorithm])}


def statement_subjects(statement: Mapping[str, Any]) -> dict[str, str]:
    """The statement's subjects as {name: sha256 hex}; refuses duplicates and odd entries."""
    try:
        subjects: dict[str, str] = {}
        for subject in statement["subject"]:
            name, sha256 = subject["name"], subject["digest"]["sha256"]
            if not isinstance(name, str) or name in subjects:
                raise ProvenanceError(f"subject {name!r} is malformed or repeated")
            subjects[name] = _hex(sha256, 256)
        return subjects
    except (KeyError, TypeError) as exc:
        raise ProvenanceError("the statement's subjects are malformed",
                              detail=repr(exc)) from exc


# --- lineage ------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetVersion:
    """A dataset a sandbox mounted: its name, its version where it has one, its digest."""

    name: str
    digest: str  # canonical `algorithm:hex`
    version: int | str | None = None

    @property
    def label(self) -> str:
        """`name@version`, or the bare name for a dataset recorded before versions."""
        return self.name if self.version is None else f"{self.name}@{self.version}"

    @classmethod
    def from_mapping(cls, data: object, where: str) -> DatasetVersion:
        if not isinstance(data, Mapping):
            raise ProvenanceError(f"{where} is not an object")
        name, version = data.get("name"), data.get("version")
        if not isinstance(name, str) or not _NAME.match(name):
            raise ProvenanceError(f"{where} has an invalid dataset name {name!r}")
        if version is not None and not (
                (isinstance(version, int) and not isinstance(version, bool) and version >= 0)
                or (isinstance(version, str) and _VERSION.match(version))):
            raise ProvenanceError(f"{where} has an invalid version {version!r}")
        return cls(name=name, digest=canonical_digest(data.get("digest")), version=version)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **({} if self.version is None else {"version": self.version}),
                "digest": self.digest}


@dataclass(frozen=True)
class LineageNode:
    """One earlier sandbox a release builds on, and the sandboxes it built on in turn."""

    sandbox: str
    code: str
    image: str
    #: What its outbox held when it ended; "" for a project predecessor whose outputs
    #: nobody mounted.
    outputs: str = ""
    datasets: tuple[DatasetVersion, ...] = ()
    #: Sandboxes whose outputs it mounted under /inputs.
    inputs: tuple[str, ...] = ()
    #: The sandbox of the same project whose workspace it continued ("": none).
    project_parent: str = ""
    owner: str = ""

    FIELDS: ClassVar[tuple[str, ...]] = ("sandbox", "outputs", "code", "image", "datasets",
                                         "inputs", "project_parent", "owner")

    @property
    def parents(self) -> tuple[str, ...]:
        return (*self.inputs, *((self.project_parent,) if self.project_parent else ()))

    @classmethod
    def from_mapping(cls, data: object, *, strict: bool = True) -> LineageNode:
        """A node from `{"sandbox", "outputs", "code", "image", "datasets": [{"name",
        "version", "digest"}], "inputs": [ids], "project_parent", "owner"}`, checked.

        `strict` refuses keys it does not know (building); a verifier passes False, so a
        later gate may add facts without failing older verifiers."""
        if not isinstance(data, Mapping):
            raise ProvenanceError("a lineage node is not an object")
        sandbox = _sandbox_id(data.get("sandbox"), "a lineage node")
        where = f"lineage node {sandbox}"
        unknown = sorted(str(k) for k in data if k not in cls.FIELDS)
        if strict and unknown:
            raise ProvenanceError(f"{where} has unknown fields {unknown}")
        outputs = data.get("outputs", "")
        datasets, inputs = data.get("datasets", []), data.get("inputs", [])
        project_parent, owner = data.get("project_parent", ""), data.get("owner", "")
        if not isinstance(datasets, list | tuple) or not isinstance(inputs, list | tuple):
            raise ProvenanceError(f"{where}: datasets and inputs must be lists")
        versions = tuple(sorted((DatasetVersion.from_mapping(d, f"a dataset of {where}")
                                 for d in datasets), key=lambda d: (d.label, d.digest)))
        if len({d.label for d in versions}) != len(versions):
            raise ProvenanceError(f"{where} names a dataset version twice")
        parents = tuple(sorted(_sandbox_id(i, f"an input of {where}") for i in inputs))
        if project_parent != "":
            project_parent = _sandbox_id(project_parent, f"the project parent of {where}")
        if len(set(parents)) != len(parents) or sandbox in (*parents, project_parent):
            raise ProvenanceError(f"{where} names an input twice, or itself as a parent")
        if not isinstance(owner, str) or len(owner) > 200:
            raise ProvenanceError(f"{where} has an invalid owner")
        return cls(sandbox=sandbox, code=canonical_digest(data.get("code")),
                   image=canonical_digest(data.get("image")),
                   outputs="" if outputs == "" else canonical_digest(outputs),
                   datasets=versions, inputs=parents, project_parent=project_parent,
                   owner=owner)

    def to_dict(self) -> dict[str, Any]:
        return {"sandbox": self.sandbox, "outputs": self.outputs, "code": self.code,
                "image": self.image, "datasets": [d.to_dict() for d in self.datasets],
                "inputs": list(self.inputs), "project_parent": self.project_parent,
                "owner": self.owner}


@dataclass(frozen=True)
class Lineage:
    """The earlier sandboxes a release builds on, as a DAG: the released sandbox's own
    parents (`inputs` it mounted, the `project_parent` whose workspace it continued) and
    every ancestor they lead to, each once, sorted by sandbox id.

    Only `Lineage.build` and `lineage_of` make one, and both check it: every parent named
    is present, every node is reached from the release, outputs mounted as inputs have a
    digest (the same one everywhere), and there is no cycle."""

    #: (sandbox id, outputs digest) of each sandbox whose outputs the released one mounted.
    inputs: tuple[tuple[str, str], ...] = ()
    project: str = ""
    project_parent: str = ""
    nodes: tuple[LineageNode, ...] = ()

    @property
    def empty(self) -> bool:
        """A release of a sandbox that built on nothing (and used no project)."""
        return not (self.inputs or self.project or self.project_parent or self.nodes)

    @property
    def input_ids(self) -> tuple[str, ...]:
        """The sandboxes whose outputs the released one mounted."""
        return tuple(sandbox for sandbox, _ in self.inputs)

    @property
    def parents(self) -> tuple[str, ...]:
        """The released sandbox's own parents: its inputs, then its project parent."""
        return (*self.input_ids, *((self.project_parent,) if self.project_parent else ()))

    def node(self, sandbox: str) -> LineageNode:
        """The ancestor with this id; KeyError if the lineage has none."""
        for node in self.nodes:
            if node.sandbox == sandbox:
                return node
        raise KeyError(sandbox)

    def walk(self) -> Iterator[LineageNode]:
        """Each ancestor once, nearest first (breadth-first from the release)."""
        seen: set[str] = set()
        level = list(self.parents)
        while level:
            following: list[str] = []
            for sandbox in level:
                if sandbox not in seen:
                    seen.add(sandbox)
                    node = self.node(sandbox)
                    following.extend(node.parents)
                    yield node
            level = following

    def to_dict(self) -> dict[str, Any]:
        return {"inputs": [{"sandbox": s, "digest": d} for s, d in self.inputs],
                "project": self.project, "project_parent": self.project_parent,
                "ancestors": [n.to_dict() for n in self.nodes]}

    def dependencies(self) -> list[dict[str, Any]]:
        """The resolvedDependencies the lineage adds: each input's outputs, then every
        ancestor's code, image and dataset versions (each once)."""
        found = [{"name": f"input:{s}", "uri": f"sealroom:sandbox/{s}/outputs",
                  "digest": digest_set(d)} for s, d in self.inputs]
        for node in self.nodes:
            prefix, uri = f"ancestor:{node.sandbox}", f"sealroom:sandbox/{node.sandbox}"
            found.append({"name": f"{prefix}:code", "uri": f"{uri}/code",
                          "digest": digest_set(node.code)})
            found.append({"name": f"{prefix}:image", "uri": f"{uri}/image",
                          "digest": digest_set(node.image)})
            found.extend({"name": f"{prefix}:dataset:{d.label}",
                          "uri": f"sealroom:dataset/{d.label}", "digest": digest_set(d.digest)}
                         for d in node.datasets)
        return found

    @classmethod
    def build(cls, *, inputs: Sequence[Mapping[str, str]] = (), project: str = "",
              project_parent: str = "", ancestors: Sequence[Mapping[str, Any]] = (),
              released: str = "", strict: bool = True) -> Lineage:
        """The lineage from its parts, checked; a node given twice identically counts once.

        `released` is the released sandbox's id where known: no ancestor may be it."""
        if project and not _NAME.match(project):
            raise ProvenanceError(f"invalid project name {project!r}")
        if project_parent and not project:
            raise ProvenanceError("a project parent without a project")
        if project_parent:
            _sandbox_id(project_parent, "the project parent")
        direct: dict[str, str] = {}
        for entry in inputs:
            if not isinstance(entry, Mapping):
                raise ProvenanceError("an input is not an object")
            sandbox = _sandbox_id(entry.get("sandbox"), "an input")
            if sandbox in direct or sandbox == released:
                raise ProvenanceError(f"input {sandbox} is named twice, or is the released "
                                      "sandbox itself")
            direct[sandbox] = canonical_digest(entry.get("digest"))
        nodes: dict[str, LineageNode] = {}
        for data in ancestors:
            node = LineageNode.from_mapping(data, strict=strict)
            if nodes.setdefault(node.sandbox, node) != node:
                raise ProvenanceError(f"lineage node {node.sandbox} is given twice, "
                                      "differently")
        if released and released in nodes:
            raise ProvenanceError(f"the released sandbox {released} is its own ancestor")
        lineage = cls(inputs=tuple(sorted(direct.items())), project=project,
                      project_parent=project_parent,
                      nodes=tuple(nodes[s] for s in sorted(nodes)))
        lineage._check_graph()
        return lineage

    def _check_graph(self) -> None:
        nodes = {n.sandbox: n for n in self.nodes}
        edges = [("the release", s, "input") for s, _ in self.inputs]
        if self.project_parent:
            edges.append(("the release", self.project_parent, "project parent"))
        for node in self.nodes:
            edges.extend((node.sandbox, s, "input") for s in node.inputs)
            if node.project_parent:
                edges.append((node.sandbox, node.project_parent, "project parent"))
        for child, parent, kind in edges:
            if parent not in nodes:
                raise ProvenanceError(f"{child} names {parent} as its {kind}, but the lineage "
                                      f"has no node {parent}")
            if kind == "input" and not nodes[parent].outputs:
                raise ProvenanceError(f"{child} mounted the outputs of {parent}, but the "
                                      "lineage has no digest of them")
        for sandbox, digest in self.inputs:
            if nodes[sandbox].outputs != digest:
                raise ProvenanceError(f"input {sandbox} has two different outputs digests")
        reached = {n.sandbox for n in self.walk()}
        if unreached := sorted(nodes.keys() - reached):
            raise ProvenanceError(f"lineage nodes {unreached[:5]} are not ancestors of the "
                                  "release")
        # Depth-first, three colours: a grey node met again closes a cycle.
        grey, black = 1, 2
        state: dict[str, int] = {}
        for root in sorted(nodes):
            if state.get(root):
                continue
            state[root] = grey
            stack: list[tuple[str, Iterator[str]]] = [(root, iter(nodes[root].parents))]
            while stack:
                sandbox, parents = stack[-1]
                parent = next(parents, "")
                if not parent:
                    state[sandbox] = black
                    stack.pop()
                elif state.get(parent) == grey:
                    raise ProvenanceError(f"the lineage has a cycle through {parent}")
                elif not state.get(parent):
                    state[parent] = grey
                    stack.append((parent, iter(nodes[parent].parents)))


def lineage_of(statement: Mapping[str, Any]) -> Lineage:
    """The lineage a (verified) statement records, checked again as a DAG; empty for a
    statement without one (a sandbox that built on nothing, or a gate before lineage).

    Also checks that resolvedDependencies hold exactly the entries the lineage implies, so
    the two cannot tell different stories."""
    try:
        build = statement["predicate"]["buildDefinition"]
        data = build["externalParameters"].get("lineage")
        dependencies = build["resolvedDependencies"]
    except (KeyError, TypeError, AttributeError) as exc:
        raise ProvenanceError("the statement has no build definition",
                              detail=repr(exc)) from exc
    if data is None:
        lineage = Lineage()
    elif not isinstance(data, Mapping):
        raise ProvenanceError("the statement's lineage is not an object")
    else:
        inputs, ancestors = data.get("inputs", []), data.get("ancestors", [])
        project, project_parent = data.get("project", ""), data.get("project_parent", "")
        if not (isinstance(inputs, list) and isinstance(ancestors, list)
                and isinstance(project, str) and isinstance(project_parent, str)):
            raise ProvenanceError("the statement's lineage is malformed")
        sandbox_spec = build["externalParameters"].get("sandboxSpec")
        released = sandbox_spec.get("sandbox_id", "") if isinstance(sandbox_spec, Mapping) \
            else ""
        lineage = Lineage.build(inputs=inputs, project=project, project_parent=project_parent,
                                ancestors=ancestors, released=str(released), strict=False)
    try:
        recorded = sorted(
            (d["name"], canonical_digest(_one_digest(d["digest"])))
            for d in dependencies
            if isinstance(d["name"], str) and d["name"].startswith(("input:", "ancestor:")))
    except (KeyError, TypeError) as exc:
        raise ProvenanceError("the statement's dependencies are malformed",
                              detail=repr(exc)) from exc
    implied = sorted((d["name"], canonical_digest(_one_digest(d["digest"])))
                     for d in lineage.dependencies())
    if recorded != implied:
        raise ProvenanceError("the lineage and the resolved dependencies name different "
                              "earlier sandboxes or digests",
                              detail=f"dependencies {recorded[:20]}; lineage {implied[:20]}")
    return lineage


def canonical_digest(digest: object) -> str:
    """`algorithm:hex`, checked; a bare 64-hex value is taken as sha256."""
    if not isinstance(digest, str):
        raise ProvenanceError(f"{digest!r} is not a digest")
    [(algorithm, value)] = digest_set(digest).items()
    return f"{algorithm}:{value}"


def _one_digest(digests: object) -> str:
    if not isinstance(digests, Mapping) or len(digests) != 1:
        raise ProvenanceError("a lineage dependency must carry exactly one digest")
    [(algorithm, value)] = digests.items()
    return f"{algorithm}:{value}"


def _sandbox_id(value: object, where: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise ProvenanceError(f"{where} has an invalid sandbox id {value!r}")
    return value


# --- DSSE ---------------------------------------------------------------------------------


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: what is actually signed."""
    kind = payload_type.encode("utf-8")
    return b"DSSEv1 %d %b %d %b" % (len(kind), kind, len(payload), payload)


def sign_statement(statement: Mapping[str, Any],
                   private_key: ec.EllipticCurvePrivateKey) -> dict[str, Any]:
    """A DSSE envelope over the statement (ECDSA P-256, SHA-256, DER signature)."""
    payload = json.dumps(statement, sort_keys=True, separators=(",", ":"),
                         ensure_ascii=False).encode("utf-8")
    signature = private_key.sign(pae(PAYLOAD_TYPE, payload), ec.ECDSA(hashes.SHA256()))
    return {
        "payload": base64.b64encode(payload).decode("ascii"),
        "payloadType": PAYLOAD_TYPE,
        "signatures": [{"keyid": keyid_of(private_key.public_key()),
                        "sig": base64.b64encode(signature).decode("ascii")}],
    }


def envelope_line(envelope: Mapping[str, Any]) -> bytes:
    """The envelope as one JSON line, the `.intoto.jsonl` form."""
    return json.dumps(envelope, sort_keys=True, separators=(",", ":")).encode("ascii") + b"\n"


def read_envelope(data: bytes) -> dict[str, Any]:
    """The one DSSE envelope in a `.intoto.jsonl` file."""
    lines = [line for line in data.splitlines() if line.strip()]
    if len(lines) != 1:
        raise ProvenanceError(f"{PROVENANCE_FILE} holds {len(lines)} envelopes, not one")
    try:
        envelope = json.loads(lines[0])
    except ValueError as exc:
        raise ProvenanceError(f"{PROVENANCE_FILE} is not JSON", detail=str(exc)) from exc
    if not isinstance(envelope, dict):
        raise ProvenanceError(f"{PROVENANCE_FILE} does not hold a DSSE envelope")
    return envelope


def verify_envelope(envelope: Mapping[str, Any],
                    public_key: ec.EllipticCurvePublicKey) -> dict[str, Any]:
    """The statement inside, once one of the envelope's signatures holds for this key."""
    try:
        payload_type = envelope["payloadType"]
        payload = base64.b64decode(envelope["payload"], validate=True)
        signatures = [base64.b64decode(s["sig"], validate=True)
                      for s in envelope["signatures"]]
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise ProvenanceSignatureError("the provenance envelope is malformed",
                                       detail=repr(exc)) from exc
    if payload_type != PAYLOAD_TYPE:
        raise ProvenanceSignatureError(f"the provenance payload type is {payload_type!r}, "
                                       f"not {PAYLOAD_TYPE}")
    message = pae(payload_type, payload)
    for signature in signatures:
        try:
            public_key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
            break
        except InvalidSignature:
            continue
    else:
        raise ProvenanceSignatureError("the provenance is not signed by this key")
    # Only parsed once the signature holds: nothing unsigned is ever interpreted.
    try:
        statement = json.loads(payload)
    except ValueError as exc:
        raise ProvenanceError("the signed provenance is not JSON", detail=str(exc)) from exc
    if not isinstance(statement, dict) or statement.get("_type") != STATEMENT_TYPE:
        raise ProvenanceError("the signed provenance is not an in-toto Statement v1")
    if statement.get("predicateType") != SLSA_PROVENANCE_V1:
        raise ProvenanceError("the signed provenance is not SLSA provenance v1")
    return statement


def _hex(value: object, bits: int) -> str:
    if not isinstance(value, str) or len(value) != bits // 4 or not _HEX.fullmatch(value):
        raise ProvenanceError(f"{value!r} is not a lowercase {bits}-bit hex digest")
    return value


def _rfc3339(moment: datetime | str) -> str:
    if isinstance(moment, str):
        try:
            moment = datetime.fromisoformat(moment)
        except ValueError as exc:
            raise ProvenanceError(f"{moment!r} is not an RFC 3339 timestamp") from exc
    if moment.tzinfo is None:
        raise ProvenanceError("provenance timestamps must carry a time zone")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
