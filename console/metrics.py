"""Prometheus metrics at /metrics (bearer token with `system:metrics:read`).

Values are read from the database at scrape time, so every console process reports the same
truth and nothing is lost on restart.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func
from sqlmodel import select

from audit.models import AuditEvent
from console.core import Sealroom
from console.guards import api_requires, core
from console.models import Sandbox, SandboxStatus
from console.permissions import Permission

metrics = Blueprint("metrics", __name__)


class SealroomCollector(Collector):
    def __init__(self, sealroom: Sealroom) -> None:
        self.sealroom = sealroom

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self.sealroom.read() as session:
            by_status = dict(session.exec(
                select(Sandbox.status, func.count()).group_by(Sandbox.status)).all())
            events = session.exec(select(func.max(AuditEvent.id))).one() or 0
            outcomes = dict(session.exec(
                select(AuditEvent.outcome, func.count())
                .where(AuditEvent.action == "sandbox:sandbox:launch")
                .group_by(AuditEvent.outcome)).all())
        sandboxes = GaugeMetricFamily("sealroom_sandboxes", "Sandboxes by status",
                                      labels=["status"])
        for status in SandboxStatus:
            sandboxes.add_metric([status.value], by_status.get(status.value, 0))
        yield sandboxes
        launches = GaugeMetricFamily("sealroom_sandbox_launch_requests",
                                     "Launch requests by outcome, as audited",
                                     labels=["outcome"])
        for outcome in ("ok", "denied", "failed"):
            launches.add_metric([outcome], outcomes.get(outcome, 0))
        yield launches
        yield GaugeMetricFamily("sealroom_audit_events", "Events in the audit chain",
                                value=events)


def registry_for(sealroom: Sealroom) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SealroomCollector(sealroom))
    return registry


@metrics.route("/metrics")
@api_requires(Permission.METRICS_READ)
def scrape() -> Any:
    from flask import current_app

    registry = current_app.extensions.setdefault("sealroom_metrics", registry_for(core()))
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)
