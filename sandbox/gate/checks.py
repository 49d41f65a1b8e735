"""The gate's entry point: every automated check on a release request, as one flat report.

Each check is a named step with a pass/fail and a reason people can read; every file gets a
result for every check that applies to it, and a request with no files fails closed. Reasons
reach the engineer before any approval, so they hold only the gate's own words, numbers and
positions; what a refused file really held is logged here, never shown.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import Any

from sandbox.gate.errors import DatasetLeak, DatasetUnreadable, GateError, InvalidFormat
from sandbox.gate.formats import (
    check_onnx,
    check_safetensors,
    parse_csv,
    parse_json,
    refuse_archive,
    safetensors_strings,
)
from sandbox.gate.leakscan import LeakScanner
from sandbox.gate.metrics import check_metrics
from sandbox.gate.pickles import TORCH_STATE_DICT_GLOBALS, read_pickle_streams, scan_pickle_file
from sandbox.gate.rules import CheckRules
from sandbox.gate.tables import rules_applied

log = logging.getLogger(__name__)

#: Leak hits listed in a reason; the rest are counted, up to MAX_HITS.
SHOWN_HITS = 5
MAX_HITS = 100


class Check(StrEnum):
    """The gate's checks; the values are stable names used in the audit log and the UI."""

    FILES = "files"
    FILE_TYPE = "file_type"
    FILE_SIZE = "file_size"
    FILE_FORMAT = "file_format"
    TOTAL_SIZE = "total_size"
    METRICS = "metrics"
    PICKLE_SCAN = "pickle_scan"
    LEAK_SCAN = "leak_scan"


class FileKind(StrEnum):
    WEIGHTS = "model weights"
    METRICS = "metrics"
    PICKLE = "pickle-based weights"
    REFUSED = "refused type"


@dataclass(frozen=True)
class CandidateFile:
    """A file frozen for review: its name in the outbox and its immutable copy."""

    name: str
    path: Path
    size: int
    sha256: str


@dataclass(frozen=True)
class CheckResult:
    check: str
    file: str  # "" for checks of the whole request
    passed: bool
    reason: str
    #: Which `CheckRules` field refused it, where one did (e.g. `small_count_k`), so the
    #: console can name the policy rule without reading the reason.
    limit: str = ""


@dataclass(frozen=True)
class CheckReport:
    results: tuple[CheckResult, ...]

    @property
    def passed(self) -> bool:
        """Every check passed; an empty report fails closed."""
        return bool(self.results) and all(r.passed for r in self.results)

    @property
    def failed(self) -> tuple[CheckResult, ...]:
        return tuple(r for r in self.results if not r.passed)

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "results": [asdict(r) for r in self.results]}


def file_kind(name: str, rules: CheckRules) -> FileKind:
    suffix = suffix_of(name)
    for kind, types in ((FileKind.WEIGHTS, rules.weight_types),
                        (FileKind.METRICS, rules.metrics_types),
                        (FileKind.PICKLE, rules.pickle_types)):
        if suffix and suffix in {t.lower() for t in types}:
            return kind
    return FileKind.REFUSED


def suffix_of(name: str) -> str:
    return PurePosixPath(name).suffix.lower()


def run_checks(files: Sequence[CandidateFile], rules: CheckRules,
               datasets: Mapping[str, Path | None]) -> CheckReport:
    """Run every check on every file; the report passes only if all of them do.

    `datasets` maps each dataset (version) the sandbox or any sandbox it built on mounted,
    labelled `name` or `name@version`, to its directory; None (or a directory that is gone)
    says its files were removed, and then the leak scan fails closed: it cannot tell what
    the outputs may not contain."""
    if not files:
        return CheckReport((CheckResult(Check.FILES.value, "", False,
                                        "the request names no files; nothing can be released"),))
    names = [f.name for f in files]
    results = [CheckResult(Check.FILES.value, "", len(set(names)) == len(names),
                           f"{len(files)} file(s) requested" if len(set(names)) == len(names)
                           else "the request names the same file more than once")]
    leaks = _LeakScan.prepare(rules, datasets)
    for candidate in files:
        results.extend(_file_checks(candidate, rules, leaks))
    total = sum(f.size for f in files)
    results.append(CheckResult(
        Check.TOTAL_SIZE.value, "", total <= rules.max_total_bytes,
        f"the request totals {_bytes(total)} (at most {_bytes(rules.max_total_bytes)})"))
    return CheckReport(tuple(results))


def _file_checks(candidate: CandidateFile, rules: CheckRules,
                 leaks: _LeakScan) -> Iterator[CheckResult]:
    name, path = candidate.name, candidate.path
    kind = file_kind(name, rules)
    yield _type_result(candidate, kind, rules)
    size_ok, size_result = _size_result(candidate, rules)
    yield size_result

    def step(check: Check, run: Callable[[], str]) -> CheckResult:
        if not size_ok:
            return CheckResult(check.value, name, False, "not run: the file failed the size check")
        return _run(check, name, run)

    if kind is not FileKind.REFUSED:
        yield step(Check.FILE_FORMAT, lambda: _format(path, kind, suffix_of(name), rules))
    if kind is FileKind.METRICS:
        yield step(Check.METRICS, lambda: _metrics(path, suffix_of(name), rules))
    if kind is FileKind.PICKLE:
        yield step(Check.PICKLE_SCAN, lambda: _pickle_scan(path))
    yield step(Check.LEAK_SCAN, lambda: leaks.scan(path, suffix_of(name)))


def _run(check: Check, name: str, run: Callable[[], str]) -> CheckResult:
    try:
        return CheckResult(check.value, name, True, run())
    except GateError as exc:
        if exc.detail != exc.user_message:
            log.info("release gate: %s refused %s: %s", check.value, name, exc.detail)
        return CheckResult(check.value, name, False, exc.user_message,
                           getattr(exc, "limit", ""))
    except Exception:  # fail closed on a bug or an I/O error, and say so
        log.exception("release gate: check %s crashed on %s", check.value, name)
        return CheckResult(check.value, name, False,
                           "the check could not complete, so the file is refused (the server "
                           "log has the detail)")


def _type_result(candidate: CandidateFile, kind: FileKind, rules: CheckRules) -> CheckResult:
    suffix = suffix_of(candidate.name)
    # Only a suffix the policy itself lists is named: any other is text the sandbox chose.
    known = {t.lower() for t in (*rules.weight_types, *rules.metrics_types, *rules.pickle_types)}
    shown = f"'{suffix}'" if suffix in known else "its"
    allowed = ", ".join([*rules.weight_types, *rules.metrics_types,
                         *(rules.pickle_types if rules.allow_pickle else ())])
    if kind is FileKind.REFUSED:
        return CheckResult(Check.FILE_TYPE.value, candidate.name, False,
                           f"files of this type may not leave; allowed: {allowed}")
    if kind is FileKind.PICKLE and not rules.allow_pickle:
        return CheckResult(Check.FILE_TYPE.value, candidate.name, False,
                           f"is pickle-based ({shown}): loading it can run any code, and this "
                           "policy refuses pickles; save the weights as .safetensors",
                           "allow_pickle")
    if kind is FileKind.PICKLE:
        return CheckResult(Check.FILE_TYPE.value, candidate.name, True,
                           f"is pickle-based ({shown}), allowed by this policy only with a "
                           "clean pickle scan")
    return CheckResult(Check.FILE_TYPE.value, candidate.name, True, f"{kind.value} ({shown})")


def _size_result(candidate: CandidateFile, rules: CheckRules) -> tuple[bool, CheckResult]:
    def result(passed: bool, reason: str) -> tuple[bool, CheckResult]:
        return passed, CheckResult(Check.FILE_SIZE.value, candidate.name, passed, reason)

    try:
        actual = candidate.path.stat().st_size
    except OSError:
        log.exception("release gate: cannot stat %s", candidate.path)
        return result(False, "the frozen copy of the file cannot be read")
    if actual != candidate.size:
        return result(False, f"the frozen copy is {actual:,} bytes, not the {candidate.size:,} "
                             "requested")
    limit = rules.max_file_bytes
    return result(actual <= limit, f"is {_bytes(actual)} (at most {_bytes(limit)})")


def _format(path: Path, kind: FileKind, suffix: str, rules: CheckRules) -> str:
    if kind is FileKind.PICKLE:
        streams = read_pickle_streams(path)
        if streams[0].member:
            return f"is a torch zip archive (stored entries) with {len(streams)} pickle(s)"
        return "is a single pickle stream with nothing after it"
    refuse_archive(path)
    if suffix == ".safetensors":
        layout = check_safetensors(path, rules)
        return (f"is valid safetensors: {layout.tensors} tensor(s) covering exactly "
                f"{layout.data_bytes:,} bytes after a {layout.header_bytes:,}-byte header with "
                f"{layout.metadata_entries} metadata key(s)")
    if suffix == ".onnx":
        summary = check_onnx(path, rules)
        # The checker bounds the IR version; bound it here too, it is a number from the file.
        ir = summary.ir_version if 0 <= summary.ir_version <= 100 else "above 100"
        return (f"is a valid ONNX model (IR {ir}, {summary.opset}): "
                f"{summary.nodes} node(s), {summary.initializers} initializer(s)")
    if suffix in (".json", ".csv"):
        if path.stat().st_size > rules.max_metrics_bytes:
            raise InvalidFormat(f"is larger than the {_bytes(rules.max_metrics_bytes)} a "
                                "metrics file may be")
        data = path.read_bytes()
        if suffix == ".json":
            parse_json(data)
            return "is strict JSON (UTF-8, no duplicate keys, no NaN/Infinity)"
        rows = parse_csv(data)
        return f"is CSV (UTF-8): {len(rows[0])} column(s), {len(rows) - 1} row(s) of data"
    raise InvalidFormat(f"has no format check for '{suffix}' files here, so it is refused")


def _metrics(path: Path, suffix: str, rules: CheckRules) -> str:
    if path.stat().st_size > rules.max_metrics_bytes:
        raise InvalidFormat(f"is larger than the {_bytes(rules.max_metrics_bytes)} a metrics "
                            "file may be")
    summary = check_metrics(path.read_bytes(), suffix, rules)
    counts = (f"; {summary.counts} count(s), all at least {rules.small_count_k}"
              if summary.counts else "")
    tables = summary.tables
    declared = (f"; {tables.tables} declared table(s), {tables.cells} cell(s) "
                f"({tables.magnitude_cells} of magnitude) pass acro's rules: "
                f"{rules_applied(rules)}" if tables.tables else "")
    return (f"holds {summary.values} finite number(s) under {summary.keys} plain name(s) "
            f"(at most {rules.max_metric_values:,} keys and values){counts}{declared}")


def _pickle_scan(path: Path) -> str:
    scan = scan_pickle_file(path, TORCH_STATE_DICT_GLOBALS)
    # Named from the gate's own allowlist constant (the scan admits nothing else).
    used = ", ".join(sorted(scan.globals_used & TORCH_STATE_DICT_GLOBALS)) or "nothing"
    return (f"imports only allowlisted torch reconstructors across {scan.streams} pickle(s): "
            f"{used}")


@dataclass(frozen=True)
class _LeakScan:
    """The leak scan as set up for one request: a scanner, or the reason there is none."""

    scanner: LeakScanner | None
    reason: str  # why there is no scanner, when there is none
    passed: bool  # what a file gets when there is no scanner
    summary: str

    @classmethod
    def prepare(cls, rules: CheckRules, datasets: Mapping[str, Path | None]) -> _LeakScan:
        if not rules.leak_scan:
            return cls(None, "not run: this policy turns the dataset leak scan off", True, "")
        if not datasets:
            return cls(None, "no dataset was mounted into the sandbox, so none can leak", True,
                       "")
        removed = sorted(label for label, root in datasets.items() if _removed(root))
        if removed:
            which = (f"dataset {removed[0]}" if len(removed) == 1
                     else f"datasets {', '.join(removed)}")
            return cls(None, f"not run: the leak scan needs {which}, whose files were removed",
                       False, "")
        present = {label: root for label, root in datasets.items() if root is not None}
        try:
            scanner = LeakScanner.from_datasets(present, rules.leak_min_row_bytes)
        except GateError as exc:
            log.error("release gate: leak-scan index failed: %s", exc.detail)
            return cls(None, f"not run: {exc.user_message}", False, "")
        except Exception:
            log.exception("release gate: leak-scan index crashed")
            return cls(None, "not run: the dataset index could not be built (the server log "
                             "has the detail)", False, "")
        names = ", ".join(f"'{n}'" for n in sorted(datasets))
        skipped = (f"; {len(scanner.skipped)} binary file(s) not indexed"
                   if scanner.skipped else "")
        summary = (f"{scanner.records:,} distinct record(s) of at least "
                   f"{rules.leak_min_row_bytes} bytes from {len(scanner.sources)} text file(s) "
                   f"of dataset(s) {names}{skipped}")
        return cls(scanner, "", True, summary)

    def scan(self, path: Path, suffix: str) -> str:
        if self.scanner is None:
            if self.passed:
                return self.reason
            raise DatasetUnreadable(self.reason)
        hits = self.scanner.scan_file(path, max_hits=MAX_HITS)
        unread = [hit.describe() for hit in hits if hit.unscanned]
        found = [hit.describe() for hit in hits if not hit.unscanned]
        if suffix == ".safetensors":
            found.extend(self._decoded_header(path))
        if found:
            encoded = any(hit.encoding for hit in hits if not hit.unscanned)
            how = "verbatim or encoded" if encoded else "verbatim"
            shown = "; ".join(found[:SHOWN_HITS])
            more = f" (and {len(found) - SHOWN_HITS} more)" if len(found) > SHOWN_HITS else ""
            limit = "at least " if len(found) >= MAX_HITS else ""
            raise DatasetLeak(f"contains {limit}{len(found)} record(s) of a mounted dataset "
                              f"({how}): {shown}{more}")
        if unread:  # fail closed: what could not be read to its end may hold records
            raise DatasetLeak(f"cannot be scanned to its end, so it is refused: "
                              f"{'; '.join(unread[:SHOWN_HITS])}")
        return (f"contains none of the {self.summary}, verbatim or under the encodings and "
                "compressions the scan undoes")

    def _decoded_header(self, path: Path) -> list[str]:
        """Records in the header's strings once JSON escapes (\\", \\u00e9 ...) are undone:
        such text is not in the file's raw bytes, but anyone reading the file gets it back."""
        assert self.scanner is not None
        try:
            strings = safetensors_strings(path)
        except InvalidFormat:  # the format check reports it
            return []
        text = "\n".join(strings).encode("utf-8", "surrogatepass")
        return [f"in the header once JSON-decoded: {hit.length} bytes equal to {hit.record}"
                for hit in self.scanner.scan_bytes(text, max_hits=MAX_HITS)]


def _removed(root: Path | None) -> bool:
    try:
        return root is None or not root.exists()
    except OSError:  # there but unreadable: building the index says so
        return False


def _bytes(count: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= size:
            return f"{count / size:,.1f} {unit}"
    return f"{count:,} bytes"
