#!/usr/bin/env bash
# Make `promtool` (Debian's `prometheus` package) available to the tests without running a
# Prometheus server: the package is downloaded and unpacked into <repo>/.cache/prometheus,
# never installed (installing it starts a server on :9090 wherever systemd runs).
# Idempotent: once unpacked (or if promtool is on PATH) it touches nothing.
set -euo pipefail
exec </dev/null

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CACHE="${SEALROOM_PROMETHEUS_CACHE:-$ROOT/.cache/prometheus}"
PROMTOOL="$CACHE/usr/bin/promtool"

say() { echo "ensure-promtool: $*"; }
die() { echo "ensure-promtool: error: $*" >&2; exit 1; }

if command -v promtool >/dev/null 2>&1; then
    say "promtool on PATH ($(command -v promtool))"
    exit 0
fi
if [[ -x "$PROMTOOL" ]] && "$PROMTOOL" --version >/dev/null 2>&1; then
    say "promtool present ($PROMTOOL)"
    exit 0
fi
command -v apt-get >/dev/null 2>&1 || die "no apt-get: install promtool by hand (Prometheus 2.x)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
chmod 755 "$work"  # apt's sandbox user writes the download here
say "downloading Debian's prometheus package (for promtool only; nothing is installed)"
if ! (cd "$work" && apt-get download -qq prometheus >/dev/null 2>&1); then
    [[ $(id -u) -eq 0 ]] || die "apt-get download prometheus failed; run 'apt-get update' first"
    apt-get update -qq || die "apt-get update failed"
    (cd "$work" && apt-get download -qq prometheus) || die "apt-get download prometheus failed"
fi
mkdir -p "$work/x"
dpkg -x "$work"/prometheus_*.deb "$work/x" || die "could not unpack the prometheus package"
mkdir -p "$CACHE/usr/bin"
install -m 0755 "$work/x/usr/bin/promtool" "$PROMTOOL.tmp"
mv -f "$PROMTOOL.tmp" "$PROMTOOL"
say "promtool $("$PROMTOOL" --version 2>&1 | head -n1 | awk '{print $3}') in $PROMTOOL"
