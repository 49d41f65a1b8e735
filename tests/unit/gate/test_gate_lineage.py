"""A release's lineage: the earlier sandboxes it builds on (outputs mounted under /inputs, a
project's workspace continued), recursively, in its signed SLSA provenance. Built and
checked as a DAG, sealed, verified offline (a forged lineage fails its own step), and printed
by `sealroom release verify`; statements without a lineage read as before."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from model_signing import signing as ms_signing

import sandbox.gate as gate_api
from console.cli_release import release
from sandbox.gate.keys import GateKey, GateKeyRing, load_private_key
from sandbox.gate.provenance import (
    Lineage,
    ProvenanceError,
    build_provenance,
    envelope_line,
    lineage_of,
    sign_statement,
)
from sandbox.gate.sealing import SealedBundle, seal_bundle
from sandbox.gate.verify import (
    STEP_NAMES,
    ProvenanceLineageInvalid,
    model_signing_hashing,
    verify_bundle,
)

PASS = b"lineage-test-passphrase"
CONTENTS = {"model.safetensors": b"\x00" * 4000 + b"weights", "metrics.json": b'{"acc": 1}'}
WHEN = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def digest(seed: str) -> str:
    return "sha256:" + hashlib.sha256(seed.encode()).hexdigest()


def node(sandbox: str, *, outputs: bool = True, inputs: tuple[str, ...] = (),
         project_parent: str = "", datasets: tuple[tuple[str, int], ...] = (("x", 1),),
         ) -> dict[str, Any]:
    return {"sandbox": sandbox, "outputs": digest(f"{sandbox}/outputs") if outputs else "",
            "code": digest(f"{sandbox}/code"), "image": digest(f"{sandbox}/image"),
            "datasets": [{"name": n, "version": v, "digest": digest(f"{n}@{v}")}
                         for n, v in datasets],
            "inputs": list(inputs), "project_parent": project_parent, "owner": "alice"}


def chain() -> dict[str, Any]:
    """sb-c (released) <- sb-b <- sb-a, and sb-c continues project `proj` from sb-p, which
    had itself mounted sb-a's outputs: sb-a is reached twice and recorded once."""
    return {
        "inputs": [{"sandbox": "sb-b", "digest": digest("sb-b/outputs")}],
        "project": "proj", "project_parent": "sb-p",
        "ancestors": [node("sb-b", inputs=("sb-a",)),
                      node("sb-a", datasets=(("x", 1), ("y", 3))),
                      node("sb-p", outputs=False, inputs=("sb-a",), datasets=())],
    }


def statement(files: dict[str, str], **lineage: Any) -> dict[str, Any]:
    return build_provenance(
        sorted(files.items()), release_id="rel-9", sandbox_spec={"sandbox_id": "sb-c"},
        image_digest=digest("sb-c/image"),
        datasets=[{"name": "x", "version": 2, "digest": digest("x@2")}],
        code_digest=digest("sb-c/code"), policy_version=4, requester="alice",
        approvers=["bob", "carol"], checks={"leak_scan": "passed"}, started_on=WHEN,
        finished_on=WHEN, builder_id="https://sealroom.dev/gate/test", **lineage)


def lineage_in(provenance: dict[str, Any]) -> Any:
    return provenance["predicate"]["buildDefinition"]["externalParameters"]["lineage"]


def dependencies(provenance: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {d["name"]: (d["uri"], "sha256:" + d["digest"]["sha256"])
            for d in provenance["predicate"]["buildDefinition"]["resolvedDependencies"]}


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> GateKey:
    return GateKeyRing(tmp_path_factory.mktemp("gate")).ensure(PASS)


def seal(tmp_path: Path, key: GateKey, **lineage: Any) -> SealedBundle:
    files = []
    for name, data in CONTENTS.items():
        blob = tmp_path / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(exist_ok=True)
        blob.write_bytes(data)
        files.append((name, blob, hashlib.sha256(data).hexdigest()))
    return seal_bundle(files=files, destination=tmp_path / "bundle",
                       private_key_pem=key.private_pem, passphrase=PASS,
                       provenance=statement({n: s for n, _, s in files}, **lineage))


def resign(bundle: Path, key: GateKey, edit: Callable[[dict[str, Any]], None]) -> None:
    """What only the key's holder could do: edit the statement, sign both files again."""
    envelope = json.loads((bundle / "provenance.intoto.jsonl").read_bytes())
    forged = json.loads(base64.b64decode(envelope["payload"]))
    edit(forged)
    (bundle / "provenance.intoto.jsonl").write_bytes(envelope_line(
        sign_statement(forged, load_private_key(key.private_pem, PASS))))
    key_path = bundle.parent / "forger.pem"
    key_path.write_bytes(key.private_pem)
    (bundle / "model.sig").unlink()
    (ms_signing.Config()  # type: ignore[no-untyped-call]
     .use_elliptic_key_signer(private_key=key_path, password=PASS)  # type: ignore[arg-type]
     .set_hashing_config(model_signing_hashing())
     .sign(bundle, bundle / "model.sig"))


def cli(bundle: Path, key: GateKey) -> Any:
    pem = bundle.parent / "release.pem"
    pem.write_bytes(key.public_pem)
    return CliRunner().invoke(release, ["verify", str(bundle), "--key", str(pem)])


# --- building -----------------------------------------------------------------------------


def test_every_ancestor_is_a_resolved_dependency_and_a_lineage_node() -> None:
    provenance = statement({"m.bin": "a" * 64}, **chain())
    deps = dependencies(provenance)
    assert deps["dataset:x@2"] == ("sealroom:dataset/x@2", digest("x@2"))
    assert deps["input:sb-b"] == ("sealroom:sandbox/sb-b/outputs", digest("sb-b/outputs"))
    for sandbox in ("sb-a", "sb-b", "sb-p"):
        assert deps[f"ancestor:{sandbox}:code"] == (f"sealroom:sandbox/{sandbox}/code",
                                                    digest(f"{sandbox}/code"))
        assert deps[f"ancestor:{sandbox}:image"] == (f"sealroom:sandbox/{sandbox}/image",
                                                     digest(f"{sandbox}/image"))
    assert deps["ancestor:sb-a:dataset:y@3"] == ("sealroom:dataset/y@3", digest("y@3"))
    assert deps["ancestor:sb-b:dataset:x@1"] == ("sealroom:dataset/x@1", digest("x@1"))
    assert "ancestor:sb-p:dataset:x@1" not in deps
    names = [d["name"] for d in
             provenance["predicate"]["buildDefinition"]["resolvedDependencies"]]
    assert len(names) == len(set(names)) == 3 + 1 + 3 * 2 + 3  # own, input, code+image, sets

    recorded = lineage_in(provenance)
    assert (recorded["project"], recorded["project_parent"]) == ("proj", "sb-p")
    assert recorded["inputs"] == [{"sandbox": "sb-b", "digest": digest("sb-b/outputs")}]
    assert [n["sandbox"] for n in recorded["ancestors"]] == ["sb-a", "sb-b", "sb-p"]
    assert recorded["ancestors"][2] == node("sb-p", outputs=False, inputs=("sb-a",),
                                            datasets=())


def test_the_statement_is_the_same_whatever_order_or_repetition_the_nodes_come_in() -> None:
    given = chain()
    shuffled = copy.deepcopy(given)
    shuffled["ancestors"] = [*reversed(given["ancestors"]), node("sb-a",
                                                                 datasets=(("y", 3), ("x", 1)))]
    assert statement({"m.bin": "a" * 64}, **given) == statement({"m.bin": "a" * 64},
                                                                **shuffled)


def test_a_digest_without_algorithm_is_taken_as_sha256() -> None:
    given = chain()
    given["ancestors"][0]["code"] = "b" * 64
    assert lineage_in(statement({"m": "a" * 64}, **given))["ancestors"][1]["code"] \
        == "sha256:" + "b" * 64


def test_without_earlier_sandboxes_the_statement_is_as_before() -> None:
    provenance = statement({"m.bin": "a" * 64})
    external = provenance["predicate"]["buildDefinition"]["externalParameters"]
    assert sorted(external) == ["files", "releaseRequest", "requester", "sandboxSpec"]
    assert list(dependencies(provenance)) == ["image", "dataset:x@2", "code"]
    unversioned = build_provenance(
        [("m", "a" * 64)], release_id="rel-1", sandbox_spec={}, image_digest=digest("i"),
        datasets=[{"name": "demo", "digest": digest("d")}], code_digest=digest("c"),
        policy_version=1, requester="a", approvers=[], checks={}, started_on=WHEN,
        finished_on=WHEN, builder_id="b")
    assert dependencies(unversioned)["dataset:demo"] == ("sealroom:dataset/demo", digest("d"))
    assert lineage_of(unversioned).empty


def _broken(change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    given = chain()
    change(given)
    return given


def _node_named(given: dict[str, Any], sandbox: str) -> dict[str, Any]:
    found: dict[str, Any] = next(n for n in given["ancestors"] if n["sandbox"] == sandbox)
    return found


BROKEN: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "missing parent": (lambda g: g["ancestors"].remove(_node_named(g, "sb-a")),
                       "has no node sb-a"),
    "missing project parent": (lambda g: g.update(project_parent="sb-q"), "has no node sb-q"),
    "cycle": (lambda g: _node_named(g, "sb-a").update(inputs=["sb-b"]), "cycle"),
    "project cycle": (lambda g: _node_named(g, "sb-a").update(project_parent="sb-p"),
                      "cycle"),
    "self as parent": (lambda g: _node_named(g, "sb-a").update(inputs=["sb-a"]), "itself"),
    "released sandbox as ancestor": (lambda g: g["ancestors"].append(node("sb-c")),
                                     "its own ancestor"),
    "bad digest": (lambda g: _node_named(g, "sb-b").update(image="sha256:xyz"),
                   "hex digest"),
    "bad algorithm": (lambda g: _node_named(g, "sb-b").update(code="md5:" + "0" * 32),
                      "unsupported digest algorithm"),
    "bad id": (lambda g: _node_named(g, "sb-b").update(sandbox="SB B"), "invalid sandbox id"),
    "bad dataset version": (
        lambda g: _node_named(g, "sb-a")["datasets"][0].update(version="../1"),
        "invalid version"),
    "input without outputs digest": (lambda g: _node_named(g, "sb-a").update(outputs=""),
                                     "no digest of them"),
    "input digest disagrees": (lambda g: g["inputs"][0].update(digest=digest("other")),
                               "two different outputs digests"),
    "unreached node": (lambda g: g["ancestors"].append(node("sb-z")), "not ancestors"),
    "node given twice differently": (
        lambda g: g["ancestors"].append(node("sb-a", datasets=())), "given twice"),
    "unknown field": (lambda g: _node_named(g, "sb-a").update(colour="red"), "unknown"),
    "project parent without project": (lambda g: g.update(project=""), "without a project"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_lineage_that_is_not_a_dag_of_exactly_these_sandboxes_is_refused(case: str) -> None:
    change, message = BROKEN[case]
    with pytest.raises(ProvenanceError, match=message):
        statement({"m.bin": "a" * 64}, **_broken(change))


# --- sealing, verifying, printing ---------------------------------------------------------


def test_a_sealed_chain_verifies_and_the_cli_prints_it(tmp_path: Path, key: GateKey) -> None:
    sealed = seal(tmp_path, key, **chain())
    seen: list[str] = []
    result = verify_bundle(sealed.path, key.public_pem, on_step=seen.append)
    assert seen == list(STEP_NAMES) and "provenance_lineage" in STEP_NAMES
    lineage = result.lineage
    assert lineage.parents == ("sb-b", "sb-p") and lineage.project == "proj"
    assert [n.sandbox for n in lineage.walk()] == ["sb-b", "sb-p", "sb-a"]
    assert lineage.node("sb-a").datasets[1].label == "y@3"
    assert result.datasets == [("x@2", digest("x@2"))]
    assert lineage == gate_api.lineage_of(json.loads(base64.b64decode(json.loads(
        (sealed.path / "provenance.intoto.jsonl").read_bytes())["payload"])))

    out = cli(sealed.path, key)
    assert out.exit_code == 0, out.output
    assert out.output.count("✓") == len(STEP_NAMES) and "VERIFIED" in out.output
    text = out.output[out.output.index("Lineage"):]
    assert text.splitlines()[1] == \
        "  this release  <- sb-b (inputs), sb-p (project)  [project proj]"
    assert "  sb-b  by alice  <- sb-a (inputs)\n" in text
    assert "  sb-p  by alice  <- sb-a (inputs)\n" in text
    assert text.index("  sb-b  by") < text.index("  sb-p  by") < text.index("  sb-a  by")
    assert text.count("  sb-a  by alice\n") == 1
    assert f"      dataset   y@3  {digest('y@3')}" in text
    assert f"      outputs   {digest('sb-a/outputs')}" in text
    assert f"      code      {digest('sb-p/code')}" in text


def test_a_release_without_earlier_sandboxes_prints_no_lineage(tmp_path: Path,
                                                               key: GateKey) -> None:
    sealed = seal(tmp_path, key)
    assert verify_bundle(sealed.path, key.public_pem).lineage == Lineage()
    out = cli(sealed.path, key)
    assert out.exit_code == 0 and "Lineage" not in out.output
    assert "✓ provenance_lineage" in out.output


FORGED: dict[str, Callable[[dict[str, Any]], None]] = {
    "parent removed": lambda s: lineage_in(s)["ancestors"].pop(0),  # sb-a
    "cycle": lambda s: lineage_in(s)["ancestors"][0]["inputs"].append("sb-b"),
    "malformed digest": lambda s: lineage_in(s)["ancestors"][1].update(code="sha256:12"),
    "not an object": lambda s: s["predicate"]["buildDefinition"]["externalParameters"]
    .update(lineage=["sb-a"]),
    # Well-formed, but the dependencies still name the old code digest.
    "code swapped": lambda s: lineage_in(s)["ancestors"][1].update(code=digest("evil")),
    "dependency dropped": lambda s: s["predicate"]["buildDefinition"]["resolvedDependencies"]
    .pop(),
    "lineage dropped": lambda s: s["predicate"]["buildDefinition"]["externalParameters"]
    .pop("lineage"),
}


@pytest.mark.parametrize("case", sorted(FORGED))
def test_a_forged_lineage_fails_its_own_step(tmp_path: Path, key: GateKey, case: str) -> None:
    sealed = seal(tmp_path, key, **chain())
    resign(sealed.path, key, FORGED[case])
    with pytest.raises(ProvenanceLineageInvalid):
        verify_bundle(sealed.path, key.public_pem)
    out = cli(sealed.path, key)
    assert out.exit_code == 1 and "✗ provenance_lineage" in out.output
    assert "NOT VERIFIED" in out.output and "- file_hashes" in out.output


def test_the_public_api_names_the_lineage() -> None:
    assert {"Lineage", "LineageNode", "lineage_of", "ProvenanceLineageInvalid",
            "verify_bundle"} <= set(gate_api.__all__)
    for name in gate_api.__all__:
        assert getattr(gate_api, name) is not None
