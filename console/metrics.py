"""Prometheus metrics (`console.services.platform_metrics`) over HTTP: `/metrics` on the
console behind a bearer token with `system:metrics:read`, and `MetricsServer`, the same
registry without a token on an address of its own (`SEALROOM_METRICS_BIND`, a private
interface only), for `sealroom up` and `sealroom ssh-gateway`.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

from flask import Blueprint, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.exposition import start_http_server

from console.core import Sealroom
from console.guards import api_requires, core
from console.permissions import Permission
from console.services.platform_metrics import registry_for
from console.settings import parse_bind

metrics = Blueprint("metrics", __name__)


def registry_of(sealroom: Sealroom) -> CollectorRegistry:
    """The installation's one registry (and so one audit tally) in this process, shared by
    the console's `/metrics` and a `MetricsServer`."""
    with _lock:
        registry = _registries.get(sealroom)
        if registry is None:
            registry = _registries[sealroom] = registry_for(sealroom)
        return registry


_lock = threading.Lock()
_registries: weakref.WeakKeyDictionary[Sealroom, CollectorRegistry] = \
    weakref.WeakKeyDictionary()


@metrics.route("/metrics")
@api_requires(Permission.METRICS_READ)
def scrape() -> Any:
    return Response(generate_latest(registry_of(core())), mimetype=CONTENT_TYPE_LATEST)


class MetricsServer:
    """prometheus-client's HTTP server for the registry, in a daemon thread: every path
    answers the metrics, with no authentication (bind it to a private interface only)."""

    def __init__(self, sealroom: Sealroom, bind: str) -> None:
        host, port = parse_bind(bind)
        self._server, self._thread = start_http_server(port, host, registry_of(sealroom))

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
