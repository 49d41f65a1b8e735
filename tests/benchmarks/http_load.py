"""Closed-loop HTTP load for the console benchmarks: client threads with keep-alive
connections, run in a process of their own so the clients never share the server's GIL.

Standard library only: the client process starts fast and loads nothing of Sealroom's.
"""

from __future__ import annotations

import http.client
import math
import multiprocessing
import threading
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Client:
    """One client thread: it asks for `path` again and again, as `label` in the results."""

    label: str
    path: str
    headers: tuple[tuple[str, str], ...] = ()


@dataclass
class Tally:
    """What the clients of one label saw: each answered request's latency, and failures."""

    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str = ""
    seconds: float = 0.0

    @property
    def requests(self) -> int:
        return len(self.latencies)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def quantile_ms(self, q: float) -> float:
        """The q-quantile latency in ms (nearest rank), NaN if nothing was answered."""
        if not self.latencies:
            return math.nan
        ranked = sorted(self.latencies)
        return ranked[max(0, math.ceil(q * len(ranked)) - 1)] * 1000


def _one_client(port: int, client: Client, start: threading.Barrier, deadline: list[float],
                out: dict[str, Any]) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    headers = dict(client.headers)
    latencies: list[float] = []
    errors = 0
    first_error = ""
    start.wait()
    while time.monotonic() < deadline[0]:
        began = time.perf_counter()
        try:
            connection.request("GET", client.path, headers=headers)
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}")
            if response.getheader("Connection", "").lower() == "close":
                connection.close()
        except Exception as exc:  # counted and reported; the client carries on
            errors += 1
            first_error = first_error or f"{client.path}: {exc}"
            connection.close()
            continue
        latencies.append(time.perf_counter() - began)
    out["ended"] = time.perf_counter()
    connection.close()
    out["latencies"], out["errors"], out["first_error"] = latencies, errors, first_error


def _client_process(port: int, clients: list[Client], seconds: float, ready: Any, go: Any,
                    results: Any) -> None:
    start = threading.Barrier(len(clients) + 1)
    deadline = [math.inf]
    outs: list[dict[str, Any]] = [{} for _ in clients]
    threads = [threading.Thread(target=_one_client, args=(port, c, start, deadline, o))
               for c, o in zip(clients, outs, strict=True)]
    for thread in threads:
        thread.start()
    ready.set()
    go.wait()
    deadline[0] = time.monotonic() + seconds
    began = time.perf_counter()
    start.wait()
    for thread in threads:
        thread.join()
    # A request still running at the deadline finishes and counts, so each client's time
    # runs to its last answer (a slow client does not stretch the others' time).
    results.put([(c.label, o["latencies"], o["errors"], o["first_error"], o["ended"] - began)
                 for c, o in zip(clients, outs, strict=True)])


def drive(port: int, clients: list[Client], seconds: float) -> dict[str, Tally]:
    """Run `clients` against 127.0.0.1:`port` for `seconds`; one Tally per label."""
    context = multiprocessing.get_context("spawn")
    ready, go, results = context.Event(), context.Event(), context.Queue()
    process = context.Process(target=_client_process,
                              args=(port, clients, seconds, ready, go, results), daemon=True)
    process.start()
    try:
        if not ready.wait(60):
            raise RuntimeError("the load client process did not start")
        go.set()
        rows = results.get(timeout=seconds + 180)
    finally:
        process.join(30)
        if process.is_alive():
            process.kill()
    tallies: dict[str, Tally] = {}
    for label, latencies, errors, first_error, elapsed in rows:
        tally = tallies.setdefault(label, Tally())
        tally.latencies.extend(latencies)
        tally.errors += errors
        tally.first_error = tally.first_error or first_error
        tally.seconds = max(tally.seconds, elapsed)
    return tallies
