#!/usr/bin/env bash
# Build the horovod wheel inside a throwaway container made from sealroom/base.
#
# sandbox/images.py runs this as root with no network, the inputs mounted read-only at /in
# (debs/: the build packages resolved against the base image; wheelhouse/: the sdist and
# every wheel horovod's build imports) and an empty /out for the wheel. Every build parameter is
# in this file, and the wheel's cache key is a hash over it, so editing a line here rebuilds.
set -euo pipefail

IN=/in
OUT=/out
SDIST=horovod-0.28.1

echo "build-wheel: installing $(ls "$IN"/debs/*.deb | wc -l) build packages"
dpkg -i "$IN"/debs/*.deb >/tmp/dpkg.log 2>&1 || { tail -n 30 /tmp/dpkg.log; exit 1; }

echo "build-wheel: installing the Python build dependencies"
python -m pip install --no-index --no-cache-dir --disable-pip-version-check -q \
    --find-links="$IN/wheelhouse" "$IN"/wheelhouse/*.whl

mkdir -p /tmp/src
tar -xzf "$IN/wheelhouse/$SDIST.tar.gz" -C /tmp/src
cd "/tmp/src/$SDIST"

# The patch: horovod 0.28.1 asks for C++14, and torch 2.x headers need C++17.
for file in CMakeLists.txt horovod/torch/CMakeLists.txt; do
    [[ $(grep -c 'set(CMAKE_CXX_STANDARD 14)' "$file") -eq 1 ]] \
        || { echo "build-wheel: $file does not hold exactly one C++14 line" >&2; exit 1; }
    sed -i 's/set(CMAKE_CXX_STANDARD 14)/set(CMAKE_CXX_STANDARD 17)/' "$file"
done

echo "build-wheel: compiling (several minutes)"
export HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_MPI=1 HOROVOD_WITH_GLOO=1 \
    HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1
python -m pip wheel --no-build-isolation --no-deps --no-index --no-cache-dir \
    --disable-pip-version-check --wheel-dir "$OUT" . >/tmp/wheel.log 2>&1 \
    || { tail -n 60 /tmp/wheel.log; exit 1; }

# The check that matters: the extension loads against this image's torch and OpenMPI.
cd /
python -m pip install --no-index --no-cache-dir --disable-pip-version-check -q --no-deps \
    "$OUT"/horovod-*.whl
python -c "import horovod.torch as hvd; assert hvd.mpi_built() and hvd.gloo_built(); print('build-wheel: horovod', __import__('horovod').__version__, 'mpi and gloo built')"
chown "${OUT_OWNER:-0:0}" "$OUT"/*.whl
