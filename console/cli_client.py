"""`sealroom sandbox ...`, `sealroom project ...` and `sealroom ssh-key ...`: an engineer's
commands (and the security officer's `sandbox running` and `sandbox stop-any`), spoken to a
running console over the JSON API with their token (`SEALROOM_URL`, `SEALROOM_TOKEN`), so
they pass through the same policy, audit and errors as the web console."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
import requests

EXIT_REFUSED = 1
EXIT_UNAVAILABLE = 3
DEFAULT_URL = "http://127.0.0.1:8000"


class _Api:
    def __init__(self, url: str, token: str) -> None:
        if not token:
            click.echo("error: set SEALROOM_TOKEN (or --token) to an API token", err=True)
            sys.exit(EXIT_REFUSED)
        self.base = url.rstrip("/") + "/api/v1"
        self.headers = {"Authorization": f"Bearer {token}"}

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = requests.request(method, self.base + path, headers=self.headers,
                                        timeout=600, **kwargs)
        except requests.RequestException as exc:
            click.echo(f"error: the console at {self.base} does not answer ({exc})", err=True)
            sys.exit(EXIT_UNAVAILABLE)
        try:
            body = response.json()
        except ValueError:
            body = {}
        if response.status_code >= 400:
            error = body.get("error", {}) if isinstance(body, dict) else {}
            rule = f" (rule {error['rule']})" if error.get("rule") else ""
            click.echo(f"error: {error.get('message') or response.reason}{rule}", err=True)
            sys.exit(EXIT_UNAVAILABLE if response.status_code >= 500 else EXIT_REFUSED)
        return body


_url = click.option("--url", envvar="SEALROOM_URL", default=DEFAULT_URL, show_default=True,
                    help="the console (SEALROOM_URL)")
_token = click.option("--token", envvar="SEALROOM_TOKEN", default="",
                      help="your API token (SEALROOM_TOKEN)")


@click.group()
def sandbox() -> None:
    """Launch and inspect your sandboxes through the console's API."""


@sandbox.command("launch")
@click.option("--dataset", "datasets", multiple=True, required=True,
              help="NAME or NAME@VERSION (repeatable)")
@click.option("--example", help="a bundled example (instead of --code)")
@click.option("--code", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="a .py script or a .zip of code")
@click.option("--command", "command", default="python train.py", show_default=True)
@click.option("--shell", is_flag=True,
              help="run the command with sh -c (for cd, &&, pipes, $VARS); by default it is "
                   "a program and its arguments, run with no shell")
@click.option("--input", "inputs", multiple=True,
              help="a finished sandbox whose outputs are mounted at /inputs/<id> (repeatable)")
@click.option("--project", default="", help="work in this project's workspace")
@click.option("--kind", type=click.Choice(["single", "mpi"]), default="single")
@click.option("--ranks", type=int, default=1)
@click.option("--cpus", type=float, default=1.0)
@click.option("--memory-mb", type=int, default=2048)
@click.option("--timeout-s", type=int, default=1800)
@click.option("--name", default="", help="your name for the run (up to 80 characters)")
@click.option("--tag", "tags", multiple=True,
              help="a label for the run: lowercase letters, digits, . _ - (repeatable, at "
                   "most 8)")
@_url
@_token
def sandbox_launch(datasets: tuple[str, ...], example: str | None, code: Path | None,
                   command: str, shell: bool, inputs: tuple[str, ...], project: str,
                   kind: str, ranks: int, cpus: float, memory_mb: int, timeout_s: int,
                   name: str, tags: tuple[str, ...], url: str, token: str) -> None:
    """Launch a sandbox; prints its id."""
    if (example is None) == (code is None):
        click.echo("error: give --example or --code", err=True)
        sys.exit(EXIT_REFUSED)
    order: dict[str, Any] = {
        "datasets": list(datasets), "command": command, "shell": shell,
        "inputs": list(inputs),
        "project": project, "kind": kind, "ranks": ranks, "name": name, "tags": list(tags),
        "limits": {"cpus": cpus, "memory_mb": memory_mb, "timeout_s": timeout_s}}
    api = _Api(url, token)
    if code is not None:
        body = api.call("POST", "/sandboxes", data={"request": json.dumps(order)},
                        files={"code": (code.name, code.read_bytes())})
    else:
        body = api.call("POST", "/sandboxes", json={**order, "example": example})
    click.echo(body["id"])


@sandbox.command("list")
@click.option("--search", "text", default="", help="text in the name or the id")
@click.option("--status", default="", help="running, succeeded, failed, stopped, ...")
@click.option("--tag", "tags", multiple=True, help="only runs with this tag (repeatable: all)")
@click.option("--dataset", default="", help="only runs that mounted this dataset")
@click.option("--kind", type=click.Choice(["single", "mpi"]), default=None)
@click.option("--page", type=int, default=1, show_default=True)
@_url
@_token
def sandbox_list(text: str, status: str, tags: tuple[str, ...], dataset: str,
                 kind: str | None, page: int, url: str, token: str) -> None:
    """Your sandboxes, newest first: id, status, started, name and tags."""
    params: list[tuple[str, str]] = [
        (key, value) for key, value in [("q", text), ("status", status),
                                        ("dataset", dataset), ("kind", kind or ""),
                                        ("page", str(page))] if value]
    params += [("tag", tag) for tag in tags]
    body = _Api(url, token).call("GET", "/sandboxes", params=params)
    for s in body["sandboxes"]:
        started = (s["started_at"] or s["created_at"])[:19].replace("T", " ")
        label = " ".join([s["name"] or "", *(f"#{t}" for t in s["tags"])]).strip()
        click.echo(f"{s['id']:<16} {s['status']:<10} {started}  {label}".rstrip())
    if not body["sandboxes"]:
        click.echo("no sandbox matches" if len(params) > 1 or page > 1 else "no sandboxes yet")
    elif body["pages"] > 1:
        click.echo(f"page {body['page']} of {body['pages']} ({body['total']} sandboxes); "
                   "--page for others")


@sandbox.command("label")
@click.argument("sandbox_id")
@click.option("--name", default=None, help="the run's new name ('' for none)")
@click.option("--tag", "tags", multiple=True, help="its tags, replacing the old (repeatable)")
@click.option("--no-tags", is_flag=True, help="remove every tag")
@_url
@_token
def sandbox_label(sandbox_id: str, name: str | None, tags: tuple[str, ...], no_tags: bool,
                  url: str, token: str) -> None:
    """Rename your sandbox and/or replace its tags."""
    change: dict[str, Any] = {}
    if name is not None:
        change["name"] = name
    if tags or no_tags:
        change["tags"] = [] if no_tags else list(tags)
    if not change:
        click.echo("error: give --name, --tag or --no-tags", err=True)
        sys.exit(EXIT_REFUSED)
    body = _Api(url, token).call("PATCH", f"/sandboxes/{sandbox_id}", json=change)
    click.echo(f"{body['id']}: {body['name'] or '(no name)'}; tags: "
               f"{', '.join(body['tags']) or 'none'}")


@sandbox.command("show")
@click.argument("sandbox_id")
@_url
@_token
def sandbox_show(sandbox_id: str, url: str, token: str) -> None:
    """A sandbox's state, as JSON."""
    click.echo(json.dumps(_Api(url, token).call("GET", f"/sandboxes/{sandbox_id}"), indent=2))


@sandbox.command("lineage")
@click.argument("sandbox_id")
@_url
@_token
def sandbox_lineage(sandbox_id: str, url: str, token: str) -> None:
    """What a sandbox builds on and what builds on it."""
    body = _Api(url, token).call("GET", f"/sandboxes/{sandbox_id}/lineage")
    click.echo(f"sandbox {body['sandbox']}")
    for d in body["datasets"]:
        click.echo(f"  dataset   {d['name']}@{d.get('version', 1)}  {d['digest']}")
    for i in body["inputs"]:
        click.echo(f"  input     {i['sandbox']} ({i['owner']})  {i['digest']}")
    if body["project"]:
        parent = body["project_parent"] or "none"
        click.echo(f"  project   {body['project']} (continues {parent})")
    for node in body["ancestors"]:
        click.echo(f"  ancestor  {node['sandbox']} ({node['owner']})  code {node['code']}")
    for d in body["descends_from"]:
        click.echo(f"  descends from {d['name']}@{d['version']}")
    for s in body["used_by"]:
        click.echo(f"  used by   {s['sandbox']} ({s['owner']}, via {s['via']})")


@sandbox.command("metrics")
@click.argument("sandbox_id")
@click.option("--csv", "as_csv", is_flag=True, help="every point as CSV: name,rank,step,value")
@_url
@_token
def sandbox_metrics(sandbox_id: str, as_csv: bool, url: str, token: str) -> None:
    """A sandbox's training metrics (what `sealroom.log_metrics` printed): the last value of
    each series, progress, and what the console dropped. Points shown spend the disclosure
    budget like the log."""
    api, since = _Api(url, token), 0
    series: dict[tuple[str, int], list[list[float]]] = {}
    while True:
        body = api.call("GET", f"/sandboxes/{sandbox_id}/metrics?since={since}")
        for s in body["series"]:
            series.setdefault((s["name"], s["rank"]), []).extend(s["points"])
        since = body["cursor"]
        if not body["more"]:
            break
    if as_csv:
        click.echo("name,rank,step,value")
        for (name, rank), points in sorted(series.items()):
            for step, value in points:
                click.echo(f"{name},{rank},{int(step)},{value!r}")
        return
    for (name, rank), points in sorted(series.items()):
        step, value = points[-1]
        click.echo(f"{name:<24} rank {rank:<3} {len(points):>6} points  step {int(step):>8}  "
                   f"last {value:.6g}")
    if not series:
        click.echo("no training metrics yet")
    progress = body["progress"]
    if progress:
        left = "" if progress["remaining_s"] is None else \
            f", about {progress['remaining_s']:.0f} s left"
        click.echo(f"progress: step {progress['step']} of {progress['total_steps']}{left}")
    if body["dropped"]:
        click.echo("dropped: " + ", ".join(f"{n} ({why})" for why, n in
                                           sorted(body["dropped"].items())))
    if body["refused"]:
        click.echo(f"refused: {body['refused']['reason']} (rule {body['refused']['rule']})",
                   err=True)


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    whole = max(round(seconds), 0)
    hours, minutes = whole // 3600, whole % 3600 // 60
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{whole % 60:02d}s"


@sandbox.command("running")
@_url
@_token
def sandbox_running(url: str, token: str) -> None:
    """Every running sandbox of every user (security officers and auditors): id, owner,
    status, datasets, age, time left, and what the active policy says of it."""
    body = _Api(url, token).call("GET", "/oversight/sandboxes")
    rows = body["sandboxes"]
    for s in rows:
        datasets = ",".join(f"{d['name']}@{d['version']}" for d in s["datasets"]) or "-"
        kind = f"cluster of {s['ranks']}" if s["kind"] == "mpi" else "single"
        policy = f"forbidden ({s['forbidden']['rule']}: {s['forbidden']['reason']})" \
            if s["forbidden"] else "allowed"
        click.echo(f"{s['id']}  {s['owner']:<16} {s['status']:<9} {datasets:<20} {kind:<14}"
                   f"age {_clock(s['age_s']):>8}  left {_clock(s['remaining_s']):>8}  {policy}")
    count = f"{len(rows)} sandbox{'es' if len(rows) != 1 else ''}"
    click.echo(f"{count} running, starting or stopping; active policy version "
               f"{body['policy_version']}")


@sandbox.command("stop-any")
@click.argument("sandbox_id")
@click.option("--reason", default="", help="why (needed for a sandbox the policy allows)")
@_url
@_token
def sandbox_stop_any(sandbox_id: str, reason: str, url: str, token: str) -> None:
    """A security officer stops anyone's sandbox (audited, as from the console's page)."""
    body = _Api(url, token).call("POST", f"/oversight/sandboxes/{sandbox_id}/stop",
                                 json={"reason": reason})
    click.echo(f"{body['id']} {body['status']}: {body['reason']}")


@sandbox.command("ssh")
@click.argument("sandbox_id")
@click.option("--rank", type=int, default=0, help="a cluster's rank (0: the launcher)")
@click.option("--print", "print_only", is_flag=True, help="print the command, do not run it")
@_url
@_token
def sandbox_ssh(sandbox_id: str, rank: int, print_only: bool, url: str, token: str) -> None:
    """Open a terminal in your running sandbox (the console's SSH gateway, with your key)."""
    body = _Api(url, token).call("GET", f"/sandboxes/{sandbox_id}/terminal")
    if not body["allowed"]:
        rule = f" (rule {body['rule']})" if body["rule"] else ""
        click.echo(f"error: no terminal: {body['reason']}{rule}", err=True)
        sys.exit(EXIT_REFUSED)
    if not body["running"]:
        click.echo(f"error: sandbox {sandbox_id} is not running", err=True)
        sys.exit(EXIT_REFUSED)
    commands = {0: body["command"], **{r["rank"]: r["command"] for r in body["ranks"]}}
    if rank not in commands:
        click.echo(f"error: sandbox {sandbox_id} has no rank {rank}", err=True)
        sys.exit(EXIT_REFUSED)
    if body["host_key"]:
        click.echo(f"gateway host key {body['host_key']}", err=True)
    if print_only:
        click.echo(commands[rank])
        return
    import os
    import shlex

    argv = shlex.split(commands[rank])
    os.execvp(argv[0], argv)  # noqa: S606 - the user's own ssh, with no shell between


@click.group()
def project() -> None:
    """Your projects: a workspace carried from sandbox to sandbox."""


@project.command("create")
@click.argument("name")
@click.option("--quota-mb", type=int, default=1024, show_default=True)
@_url
@_token
def project_create(name: str, quota_mb: int, url: str, token: str) -> None:
    """Create project NAME with a workspace of QUOTA MB."""
    body = _Api(url, token).call("POST", "/projects", json={"name": name,
                                                            "quota_mb": quota_mb})
    click.echo(f"project {body['name']} created ({body['quota_mb']} MB)")


@project.command("list")
@_url
@_token
def project_list(url: str, token: str) -> None:
    """Your projects and those shared with you."""
    for p in _Api(url, token).call("GET", "/projects")["projects"]:
        busy = f"in use by {p['in_use_by']}" if p["in_use_by"] else "free"
        click.echo(f"{p['name']:<24} {p['owner']:<16} {p['quota_mb']:>7} MB  {busy}")


@click.group("ssh-key")
def ssh_key() -> None:
    """Your SSH public keys for the SSH gateway."""


#: Read at most this much of a key file: one public key is a line of a few hundred bytes.
_KEY_FILE_MAX = 64 * 1024


@ssh_key.command("add")
@click.argument("path", type=click.Path(dir_okay=False, allow_dash=True, path_type=Path))
@click.option("--name", default="", help="what to call it (default: the key's comment)")
@_url
@_token
def ssh_key_add(path: Path, name: str, url: str, token: str) -> None:
    """Add the public key in PATH (a .pub file; - reads standard input)."""
    try:
        if str(path) == "-":
            text = sys.stdin.read(_KEY_FILE_MAX + 1)
        else:
            with path.open(encoding="utf-8", errors="replace") as file:
                text = file.read(_KEY_FILE_MAX + 1)
    except OSError as exc:
        click.echo(f"error: cannot read {path}: {exc.strerror or exc}", err=True)
        sys.exit(EXIT_REFUSED)
    if "PRIVATE KEY" in text:
        # Checked here so that a private key never leaves this machine.
        pub = "" if str(path) == "-" else f" ({path}.pub)"
        click.echo(f"error: {path} is a PRIVATE key, and was not sent; give the public key "
                   f"file{pub}", err=True)
        sys.exit(EXIT_REFUSED)
    if len(text) > _KEY_FILE_MAX:
        click.echo(f"error: {path} is too large to be a public key", err=True)
        sys.exit(EXIT_REFUSED)
    key = _Api(url, token).call("POST", "/ssh-keys", json={"public_key": text, "name": name})
    click.echo(f"SSH key {key['id']} added: {key['name']}  {key['algorithm']} {key['bits']} "
               f"bits  {key['fingerprint']}")


@ssh_key.command("list")
@_url
@_token
def ssh_key_list(url: str, token: str) -> None:
    """Your SSH keys: id, name, type, fingerprint, when last used."""
    keys = _Api(url, token).call("GET", "/ssh-keys")["ssh_keys"]
    if not keys:
        click.echo("no SSH keys (add one: sealroom ssh-key add ~/.ssh/id_ed25519.pub)")
    for k in keys:
        used = (k["last_used_at"] or "never")[:16].replace("T", " ")
        click.echo(f"{k['id']:>5}  {k['name'][:24]:<24} {k['algorithm']:<20} {k['bits']:>5}  "
                   f"{k['fingerprint']}  last used {used}")


@ssh_key.command("remove")
@click.argument("key_id", type=int)
@_url
@_token
def ssh_key_remove(key_id: int, url: str, token: str) -> None:
    """Remove your SSH key KEY_ID: the gateway refuses it from now on."""
    key = _Api(url, token).call("DELETE", f"/ssh-keys/{key_id}")
    click.echo(f"SSH key {key['id']} ({key['name']}, {key['fingerprint']}) removed")
