"""Model disclosure control at the gate: attack each model before it leaves.

For every model file in a release request whose training job wrote a target description
beside it (`<model>.target.json`, by `sealroom.save_target`), the gate runs SACRO-ML's
membership-inference attacks in a sealed sandbox of their own: the `sealroom/sacroml` image,
no network, the source sandbox's limits and runtime, its datasets and outbox mounted
read-only, a fresh workspace (the description carries the job's modules). The request waits
in `submitted` while they run. Then the figures, read as numbers only
(`sandbox.gate.attack_report`), are judged against the policy's limits
(`release.model_risk`) and added to the request's checks (and so to its signed provenance,
with the attack image's digest); the request moves to review or to checks failed, audited in
the same transaction. A console that dies mid-run runs the attacks again when it starts
(`resume`).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlmodel import select

from audit.chain import append, utc_now
from audit.events import Actor, AuditAction, EventDraft, Outcome
from console.core import Sealroom
from console.models import Dataset, ReleaseRequest, ReleaseStatus, Sandbox
from console.services import images as images_service
from policies.schema import ModelRisk
from sandbox import spec as sandbox_spec
from sandbox.backend import RunState
from sandbox.gate.attack_report import (
    ATTACK_TITLES,
    FIGURE_TITLES,
    AttackReportUnreadable,
    judge,
    read_report,
)
from sandbox.gate.checks import CheckResult

log = logging.getLogger(__name__)

CHECK = "model_risk"
IMAGE = "sacroml"
#: Where the attack finds the source sandbox's outputs (its outbox, read-only).
SUFFIX = ".target.json"
_running: set[str] = set()
_running_lock = threading.Lock()
_POLL_S = 1.0


@dataclass(frozen=True)
class ModelUnderTest:
    """A model file of the request and the target description beside it in the outbox."""

    path: str  # in the outbox
    label: str  # as people see it


def plan(rules: ModelRisk, models: list[tuple[str, str]], outbox: set[str]
         ) -> tuple[list[ModelUnderTest], list[CheckResult]]:
    """Which models (outbox path, label) are attacked, and the results of those that are not:
    a model without a description fails when the policy requires one and passes otherwise."""
    if not rules.enabled:
        return [], [CheckResult(CHECK, label, True, "not run: this policy turns the "
                                "membership-inference attacks off") for _, label in models]
    attacked, results = [], []
    for path, label in models:
        if path + SUFFIX in outbox:
            attacked.append(ModelUnderTest(path, label))
        elif rules.required:
            results.append(CheckResult(
                CHECK, label, False, "has no target description beside it, and this policy "
                "attacks every model before it leaves: have the training job call "
                "sealroom.save_target(...) for it (see the user guide)", "model_risk.required"))
        else:
            results.append(CheckResult(
                CHECK, label, True, "not attacked: it has no target description beside it "
                "(sealroom.save_target), which this policy allows"))
    return attacked, results


def start(core: Sealroom, release_id: str) -> threading.Thread | None:
    """Run the attacks of a submitted request on a thread of their own (once at a time)."""
    with _running_lock:
        if release_id in _running:
            return None
        _running.add(release_id)
    thread = threading.Thread(target=_run_guarded, args=(core, release_id),
                              name=f"model-risk-{release_id}", daemon=True)
    thread.start()
    return thread


def resume(core: Sealroom) -> None:
    """After a restart: run again the attacks of every request still waiting for them."""
    with core.read() as session:
        waiting = session.exec(select(ReleaseRequest.id).where(
            ReleaseRequest.status == ReleaseStatus.SUBMITTED)).all()
    for release_id in waiting:
        start(core, release_id)


def _run_guarded(core: Sealroom, release_id: str) -> None:
    try:
        run(core, release_id)
    except Exception:
        log.exception("model risk: the attack run of %s crashed", release_id)
        _finish(core, release_id, [], fallback="the attack run could not complete, so the "
                "model is refused (the server log has the detail)")
    finally:
        with _running_lock:
            _running.discard(release_id)


def run(core: Sealroom, release_id: str) -> None:
    """Attack every described model of the request, then judge and record (one transaction)."""
    with core.read() as session:
        record = session.get(ReleaseRequest, release_id)
        if record is None or record.status != ReleaseStatus.SUBMITTED:
            return
        sandbox = session.get(Sandbox, record.sandbox_id)
        assert sandbox is not None
        checks = json.loads(record.checks)
        mounts = _dataset_mounts(session, sandbox)
    pending = [ModelUnderTest(**m) for m in checks.get(CHECK, {}).get("pending", [])]
    rules = core.policy.release.model_risk
    image = images_service.current_image(core, IMAGE)
    results: list[CheckResult] = []
    figures: dict[str, Any] = {}
    for number, model in enumerate(pending, start=1):
        if image is None:
            results.append(CheckResult(CHECK, model.label, False, "the attack image "
                                       "(sealroom/sacroml) is not installed, so the model "
                                       "cannot be attacked and is refused"))
            continue
        result, found = _attack(core, record, sandbox, mounts, model, number, image.digest,
                                rules)
        results.append(result)
        if found is not None:
            figures[model.label] = found
    _finish(core, release_id, results, figures=figures,
            image=image.digest if image is not None else "",
            limits={name: bound.model_dump() for name, bound in rules.limits.items()})


def _attack(core: Sealroom, record: ReleaseRequest, source: Sandbox,
            mounts: tuple[sandbox_spec.DatasetMount, ...], model: ModelUnderTest, number: int,
            image: str, rules: ModelRisk) -> tuple[CheckResult, list[dict[str, Any]] | None]:
    attack_id = f"atk-{record.id.removeprefix('rel-')}-{number}"
    source_spec = json.loads(source.spec)
    limits = sandbox_spec.Limits(**{**source_spec.get("limits", {}),
                                    "timeout_s": rules.timeout_minutes * 60})
    storage = core.storage
    inputs = f"{sandbox_spec.INPUTS_ROOT}/{source.id}"
    spec = sandbox_spec.SandboxSpec(
        sandbox_id=attack_id, owner=record.requester, image=image,
        command=("sealroom-attack", "--target", f"{inputs}/{model.path}{SUFFIX}",
                 "--model", f"{inputs}/{model.path}", "--code", sandbox_spec.WORKSPACE,
                 "--data", sandbox_spec.DATA_ROOT, "--out", sandbox_spec.OUTBOX,
                 "--attacks", ",".join(rules.attacks),
                 "--shadow-models", str(rules.shadow_models)),
        datasets=mounts, limits=limits, inputs=(sandbox_spec.InputMount(source.id),),
        runtime=sandbox_spec.Runtime(source_spec.get("runtime", "runc")),
        env=(("SEALROOM_SANDBOX", attack_id),))
    storage.discard(attack_id)  # what a run cut short by a restart left
    storage.create(attack_id, limits)
    storage.seal_staging(attack_id)
    backend = core.backend
    state = backend.create(spec)
    started = time.monotonic()
    try:
        backend.start(state)
        deadline = started + limits.timeout_s
        while (status := backend.poll(state)).state not in (RunState.EXITED, RunState.MISSING):
            if time.monotonic() > deadline:
                backend.stop(state)
                return CheckResult(CHECK, model.label, False, f"the attacks did not finish "
                                   f"within {rules.timeout_minutes} minute(s), so the model is "
                                   "refused", "model_risk.timeout_minutes"), None
            time.sleep(_POLL_S)
        seconds = time.monotonic() - started
        if status.exit_code != 0:
            return CheckResult(CHECK, model.label, False, f"the attack run failed (exit code "
                               f"{status.exit_code}), so the model is refused: check that its "
                               "target description matches the model and the data"), None
        try:
            found = read_report(storage.outbox(attack_id), rules.attacks)
        except AttackReportUnreadable as exc:
            return CheckResult(CHECK, model.label, False, exc.user_message), None
        limits_of: dict[str, dict[str, float | None]] = {
            name: bound.model_dump() for name, bound in rules.limits.items()}
        verdict = judge(found, limits_of)
        log.info("model risk: %s attacked in %.1f s", attack_id, seconds)
        return (CheckResult(CHECK, model.label, verdict.passed, verdict.reason, verdict.limit),
                [{**f.to_dict(), "seconds": round(seconds, 1)} for f in found])
    finally:
        backend.remove(state)
        storage.discard(attack_id)


def _dataset_mounts(session: Any, sandbox: Sandbox) -> tuple[sandbox_spec.DatasetMount, ...]:
    mounts = []
    for entry in json.loads(sandbox.datasets):
        row = session.exec(select(Dataset).where(Dataset.name == entry["name"]).where(
            Dataset.version == int(entry.get("version", 1)))).first()
        if row is not None and not row.removed_at:
            mounts.append(sandbox_spec.DatasetMount(row.name, Path(row.path),
                                                    str(entry.get("digest", ""))))
    return tuple(mounts)


def _finish(core: Sealroom, release_id: str, results: list[CheckResult], *,
            figures: dict[str, Any] | None = None, image: str = "", fallback: str = "",
            limits: dict[str, Any] | None = None) -> None:
    """Add the results to the request's checks and move it on, audited, in one transaction."""
    with core.transaction() as session:
        record = session.get(ReleaseRequest, release_id)
        if record is None or record.status != ReleaseStatus.SUBMITTED:
            return
        checks = json.loads(record.checks)
        pending = checks.get(CHECK, {}).get("pending", [])
        if fallback:
            results = [CheckResult(CHECK, m["label"], False, fallback) for m in pending]
        items = [{"check": r.check, "file": r.file, "passed": r.passed, "reason": r.reason,
                  "limit": r.limit, **({} if r.passed else {"rule": f"release.{r.limit}"
                                                            if r.limit else "release.model_risk"})}
                 for r in results]
        checks["results"] = [*checks.get("results", []), *items]
        passed = bool(checks["results"]) and all(r["passed"] for r in checks["results"])
        checks["passed"] = passed
        checks[CHECK] = {"image": image, "attacks": figures or {}, "limits": limits or {}}
        record.checks = json.dumps(checks)
        record.status = ReleaseStatus.IN_REVIEW if passed else ReleaseStatus.CHECKS_FAILED
        record.updated_at = utc_now()
        session.add(record)
        failed = [r for r in results if not r.passed]
        append(session, EventDraft(
            Actor.system("release-gate"), AuditAction.RELEASE_MODEL_RISK,
            f"release:{release_id}", Outcome.OK if not failed else Outcome.DENIED,
            "; ".join(f"{r.file}: {r.reason}" for r in failed)[:2000],
            details={"image": image, "attacks": figures or {},
                     "results": [{"file": r.file, "passed": r.passed} for r in results],
                     **({"rule": items[results.index(failed[0])]["rule"]} if failed else {})}))


def shown(checks: dict[str, Any]) -> list[dict[str, Any]]:
    """The figures of a request's attacks as the release page draws them: per model, per
    attack its title, each figure with the limit it was judged against, and the ROC as
    points of a 200 x 200 plot (the console's own drawing of the rounded numbers)."""
    found = checks.get(CHECK, {})
    limits = found.get("limits", {})
    pages = []
    for label, attacks in found.get("attacks", {}).items():
        rows = []
        for attack in attacks:
            bounds = limits.get(attack["attack"], {})
            figures = [{"name": name, "value": float(attack[name]), "limit": bounds.get(name)}
                       for name in FIGURE_TITLES]
            roc = attack.get("roc") or {}
            points = " ".join(f"{fpr * 200:.1f},{200 - tpr * 200:.1f}"
                              for fpr, tpr in zip(roc.get("fpr", []), roc.get("tpr", []),
                                                  strict=False))
            rows.append({"title": ATTACK_TITLES.get(attack["attack"], "attack"),
                         "figures": figures, "points": points,
                         "repetitions": int(attack.get("repetitions", 1)),
                         "seconds": float(attack.get("seconds", 0.0)),
                         "over": any(f["limit"] is not None and f["value"] > f["limit"]
                                     for f in figures)})
        pages.append({"label": label, "attacks": rows})
    return pages


def attack_titles(rules: ModelRisk) -> str:
    return ", ".join(ATTACK_TITLES[a] for a in rules.attacks)
