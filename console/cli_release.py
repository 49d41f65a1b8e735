"""`sealroom release`: check a downloaded release bundle offline, without the server, and
print what it vouches for, the earlier sandboxes it builds on included (exit 0 only when
every step holds, 1 when one fails, 2 for usage); and, through a running console's API,
request a release and read its checks, the gate's attacks on its models included.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click

from console.cli_client import _Api, _token, _url
from sandbox.gate.keys import UnsupportedKey
from sandbox.gate.provenance import Lineage, LineageNode
from sandbox.gate.verify import (
    STEP_NAMES,
    BundleVerification,
    BundleVerificationError,
    verify_bundle,
)

EXIT_FAILED = 1

_STEP_LABELS = {
    "model_signature": "model.sig is an OpenSSF model signature by this key",
    "provenance_signature": "provenance.intoto.jsonl is signed by this key",
    "provenance_statement": "the provenance is a Sealroom release's SLSA v1 provenance",
    "provenance_lineage": "the earlier sandboxes it names form a DAG, every digest well-formed",
    "provenance_subjects": "both statements name the same files and digests",
    "file_hashes": "every file in the bundle has its signed SHA-256, none extra or missing",
}


@click.group()
def release() -> None:
    """Release requests through the console's API; released bundles verified offline."""


@release.command("request")
@click.argument("sandbox_id")
@click.argument("files", nargs=-1, required=True)
@click.option("-j", "--justification", required=True, help="Why these files may leave.")
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="Wait while the gate attacks the models (the request is 'submitted').")
@_url
@_token
def release_request(sandbox_id: str, files: tuple[str, ...], justification: str, wait: bool,
                    url: str, token: str) -> None:
    """Request the release of FILES (outbox names, or positions like '#2') of SANDBOX_ID."""
    api = _Api(url, token)
    body = api.call("POST", "/releases", json={"sandbox": sandbox_id, "files": list(files),
                                               "justification": justification})
    _print_release(_settled(api, body) if wait else body)


@release.command("show")
@click.argument("release_id")
@click.option("--wait", is_flag=True, help="Wait while the gate attacks the models.")
@_url
@_token
def release_show(release_id: str, wait: bool, url: str, token: str) -> None:
    """A release request: its state, every check with its reason, the attacks' figures."""
    api = _Api(url, token)
    body = api.call("GET", f"/releases/{release_id}")
    _print_release(_settled(api, body) if wait else body)


def _settled(api: _Api, body: dict[str, Any]) -> dict[str, Any]:
    if body.get("status") == "submitted":
        click.echo(f"{body['id']}: the gate is attacking the model(s); waiting ...", err=True)
    while body.get("status") == "submitted":
        time.sleep(2)
        body = api.call("GET", f"/releases/{body['id']}")
    return body


def _print_release(body: dict[str, Any]) -> None:
    checks = body.get("checks", {})
    click.echo(f"{body['id']}  {str(body['status']).replace('_', ' ')}  "
               f"(sandbox {body.get('sandbox', '')})")
    for result in checks.get("results", []):
        mark = "✓" if result.get("passed") else "✗"
        rule = f"  [rule {result['rule']}]" if result.get("rule") else ""
        click.echo(f"  {mark} {result.get('check', ''):<12} {result.get('file') or '—'}: "
                   f"{result.get('reason', '')}{rule}")
    for line in _model_risk(checks)[1:]:
        if line.startswith("    ") and "AUC" in line:
            click.echo(line)
    if body.get("status") == "checks_failed":
        sys.exit(EXIT_FAILED)


@release.command()
@click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--key", "key_path", required=True, metavar="PEM",
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The release gate's public key (release.pem).")
@click.option("-v", "--verbose", is_flag=True, help="On failure, also print the raw detail.")
def verify(bundle: Path, key_path: Path, verbose: bool) -> None:
    """Verify BUNDLE's signatures and every file's hash with the gate's public key."""
    try:
        public_pem = key_path.read_bytes()
    except OSError as exc:
        raise click.BadParameter(str(exc), param_hint="--key") from exc
    click.echo(f"Verifying {bundle}")
    try:
        result = verify_bundle(bundle, public_pem, on_step=_passed)
    except UnsupportedKey as exc:
        raise click.BadParameter(exc.user_message, param_hint="--key") from exc
    except BundleVerificationError as exc:
        _failed(exc, verbose=verbose)
        sys.exit(EXIT_FAILED)
    _facts(result)


def _passed(step: str) -> None:
    click.echo(f"  ✓ {step:<21} {_STEP_LABELS.get(step, '')}")


def _failed(error: BundleVerificationError, *, verbose: bool) -> None:
    click.echo(f"  ✗ {error.step:<21} {error.user_message}")
    if verbose and error.detail != error.user_message:
        click.echo(f"    {'':<21} {error.detail}")
    if error.step in STEP_NAMES:
        for step in STEP_NAMES[STEP_NAMES.index(error.step) + 1:]:
            click.echo(f"  - {step:<21} not checked")
    click.echo("NOT VERIFIED: do not use this bundle.")


def _facts(result: BundleVerification) -> None:
    size = max(len(name) for name, _ in result.files)
    lines = [
        f"Release     {result.release_id}",
        *([f"Sandbox     {result.sandbox_id}"] if result.sandbox_id else []),
        f"Signed by   gate key {result.keyid}",
        f"Requester   {result.requester}",
        f"Approvers   {', '.join(result.approvers) or '(none)'}",
        f"Policy      version {result.policy_version}",
        f"Image       {result.image_digest}",
        f"Code        {result.code_digest}",
        "Datasets    " + ("\n            ".join(f"{name}  {digest}"
                                               for name, digest in result.datasets)
                          or "(none)"),
        f"Sealed      {result.finished_on} by {result.builder_id}",
        f"Files       {len(result.files)}",
    ]
    lines += [f"  {name:<{size}}  sha256:{digest}" for name, digest in result.files]
    lines += _model_risk(result.checks)
    if not result.lineage.empty:
        lines += _lineage(result.lineage)
    click.echo("\n".join(lines))
    click.echo("VERIFIED: both signatures and every file hash hold.")


def _model_risk(checks: dict[str, Any]) -> list[str]:
    """The membership-inference attacks the gate ran on each model, as the signed
    provenance records them (figures, limits, the attack image's digest)."""
    results = [r for r in checks.get("results", []) if isinstance(r, dict)
               and r.get("check") == "model_risk"]
    if not results:
        return []
    found = checks.get("model_risk", {}) if isinstance(checks.get("model_risk"), dict) else {}
    lines = ["Model risk  " + (f"attacked with image {found['image']}" if found.get("image")
                               else "no model was attacked")]
    attacks = found.get("attacks", {}) if isinstance(found.get("attacks"), dict) else {}
    for result in results:
        name = str(result.get("file", ""))
        lines.append(f"  {name}  {'pass' if result.get('passed') else 'FAIL'}")
        for attack in attacks.get(name, []) if isinstance(attacks.get(name), list) else []:
            lines.append(f"    {attack.get('attack', '?'):<10} AUC {attack.get('auc')}  "
                         f"advantage {attack.get('advantage')}  "
                         f"TPR@0.1%FPR {attack.get('tpr_at_low_fpr')}")
        if name not in attacks:
            lines.append(f"    {result.get('reason', '')}")
    return lines


def _lineage(lineage: Lineage) -> list[str]:
    """The earlier sandboxes as a tree read from the release back, each once, nearest first;
    `<-` names a node's parents: whose outputs it mounted (inputs) and whose workspace it
    continued (project)."""
    lines = ["Lineage", f"  this release{_parents(lineage.input_ids, lineage.project_parent)}"]
    if lineage.project:
        lines[-1] += f"  [project {lineage.project}]"
    for node in lineage.walk():
        lines += _node(node)
    return lines


def _node(node: LineageNode) -> list[str]:
    owner = f"  by {node.owner}" if node.owner else ""
    lines = [f"  {node.sandbox}{owner}{_parents(node.inputs, node.project_parent)}"]
    if node.outputs:
        lines.append(f"      outputs   {node.outputs}")
    lines += [f"      code      {node.code}", f"      image     {node.image}"]
    lines += [f"      dataset   {d.label}  {d.digest}" for d in node.datasets]
    return lines


def _parents(inputs: tuple[str, ...], project_parent: str) -> str:
    named = [f"{i} (inputs)" for i in inputs]
    if project_parent:
        named.append(f"{project_parent} (project)")
    return f"  <- {', '.join(named)}" if named else ""
