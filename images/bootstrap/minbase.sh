#!/usr/bin/env bash
# Build a registry-free Debian bookworm base image with Python 3.11 and import it into Docker.
#
# Usage: minbase.sh IMAGE_REF        e.g. minbase.sh sealroom/bookworm-minbase:0123456789ab
#
# sandbox/images.py tags the image with a hash of this file (which holds every debootstrap
# parameter) and of SEALROOM_DEBIAN_MIRROR, so editing a parameter here yields a new tag.
set -euo pipefail

SUITE=bookworm
VARIANT=minbase
INCLUDE=python3,python3-venv,ca-certificates
MIRROR="${SEALROOM_DEBIAN_MIRROR:-http://deb.debian.org/debian}"

if [[ $# -ne 1 || -z "$1" ]]; then
    echo "usage: $0 IMAGE_REF" >&2
    exit 2
fi
image_ref="$1"

for tool in debootstrap docker tar; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "minbase: $tool is not installed (run images/host/ensure-host.sh)" >&2
        exit 1
    fi
done
if [[ $(id -u) -ne 0 ]]; then
    echo "minbase: debootstrap needs root" >&2
    exit 1
fi

workdir="$(mktemp -d /var/tmp/sealroom-minbase.XXXXXX)"
trap 'rm -rf --one-file-system "$workdir"' EXIT
rootfs="$workdir/rootfs"

echo "minbase: debootstrap --variant=$VARIANT $SUITE ($MIRROR)"
debootstrap --variant="$VARIANT" --include="$INCLUDE" "$SUITE" "$rootfs" "$MIRROR" \
    >"$workdir/debootstrap.log" 2>&1 || {
    echo "minbase: debootstrap failed; last lines:" >&2
    tail -n 30 "$workdir/debootstrap.log" >&2
    exit 1
}

echo "minbase: cleaning the root filesystem"
# Package indexes, caches, logs and manuals are dead weight in an image that never runs apt.
rm -rf "$rootfs"/var/lib/apt/lists/* \
    "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
    "$rootfs"/var/cache/apt/archives/partial/* \
    "$rootfs"/var/cache/debconf/*-old "$rootfs"/var/lib/dpkg/*-old \
    "$rootfs"/var/log/* "$rootfs"/tmp/* "$rootfs"/var/tmp/* \
    "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
    "$rootfs"/root/.cache

echo "minbase: importing as $image_ref"
# An imported tarball has no config at all: give it the PATH and locale a Debian image has.
tar --numeric-owner -C "$rootfs" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'LABEL sealroom.image=bookworm-minbase' \
    --change 'CMD ["/usr/bin/python3"]' \
    - "$image_ref" >/dev/null
echo "minbase: done $image_ref"
