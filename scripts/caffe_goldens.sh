#!/usr/bin/env bash
# Build the official BVLC Caffe (CPU only, with pycaffe) outside the repository
# and regenerate the Caffe goldens in tests/goldens/caffe/ (issue 17).
#
#   bash scripts/caffe_goldens.sh            # deps + build (cached) + goldens
#   bash scripts/caffe_goldens.sh --build    # deps + build only
#   bash scripts/caffe_goldens.sh --goldens  # goldens only (Caffe must be built)
#
# Environment:
#   FCNSEG_CAFFE_CACHE  build folder, default ~/.cache/fcnseg-caffe (reused when present)
#   CAFFE_GIT_DIR       a git directory holding BVLC/caffe commit 9b89154
#                       (default: the `fetch` snapshot /work/.mirror/BVLC+caffe/repo,
#                       else `git clone https://github.com/BVLC/caffe`)
#   JOBS                make -j, default 2
#
# Why real Caffe: the tests in tests/test_caffe_golden*.py must compare fcnseg
# with the reference implementation itself, not with fcnseg's own reading of it.
# Caffe is only needed to REGENERATE the goldens; the test suite never needs it.
set -euo pipefail

CAFFE_COMMIT=9b8915401          # BVLC/caffe master, "Merge pull request #6878"
CACHE=${FCNSEG_CAFFE_CACHE:-$HOME/.cache/fcnseg-caffe}
SRC=$CACHE/caffe-$CAFFE_COMMIT
JOBS=${JOBS:-2}
REPO=$(cd "$(dirname "$0")/.." && pwd)
MODE=${1:-all}

# Debian 12 packages. Debian's own /usr/bin/python3 (3.11) and its numpy and
# protobuf run pycaffe, so the C++ protobuf (3.21) and the Python one agree.
DEPS="build-essential cmake git libboost-system-dev libboost-thread-dev
libboost-filesystem-dev libboost-python-dev libboost-regex-dev libprotobuf-dev
protobuf-compiler libgoogle-glog-dev libgflags-dev libhdf5-dev libopenblas-dev
python3-dev python3-numpy python3-protobuf python3-six"

install_deps() {
    local missing=()
    for p in $DEPS; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "installing: ${missing[*]}"
        apt-get update
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
    fi
}

get_source() {
    [ -f "$SRC/Makefile" ] && return
    local gitdir=${CAFFE_GIT_DIR:-/work/.mirror/BVLC+caffe/repo}
    if ! git --git-dir="$gitdir" cat-file -e "$CAFFE_COMMIT^{commit}" 2>/dev/null; then
        gitdir=$CACHE/caffe.git
        [ -d "$gitdir" ] || git clone --bare https://github.com/BVLC/caffe "$gitdir"
    fi
    mkdir -p "$SRC.tmp"
    git --git-dir="$gitdir" archive "$CAFFE_COMMIT" | tar -x -C "$SRC.tmp"
    patch_source "$SRC.tmp"
    mv "$SRC.tmp" "$SRC"
}

patch_source() {
    local d=$1
    # Patch 1 (the only source change): protobuf >= 3.11 (Debian 12 has 3.21)
    # removed the two-argument CodedInputStream::SetTotalBytesLimit(limit, warn).
    # Caffe's limit (INT_MAX) is kept; the warning threshold argument is dropped.
    sed -i 's/SetTotalBytesLimit(kProtoReadBytesLimit, 536870912)/SetTotalBytesLimit(kProtoReadBytesLimit)/' \
        "$d/src/caffe/util/io.cpp"
    grep -q 'SetTotalBytesLimit(kProtoReadBytesLimit)' "$d/src/caffe/util/io.cpp"
    # Build configuration (not a source patch): Makefile.config.example with
    # CPU_ONLY, OpenBLAS, Python 3.11 + boost_python311 (Debian's name for
    # Boost.Python built for 3.11), HDF5 serial paths, no OpenCV/LevelDB/LMDB
    # (only data layers need them; the goldens feed blobs directly).
    cat > "$d/Makefile.config" <<'EOF'
CPU_ONLY := 1
USE_OPENCV := 0
USE_LEVELDB := 0
USE_LMDB := 0
BLAS := open
BLAS_INCLUDE := /usr/include/x86_64-linux-gnu/openblas-pthread
PYTHON_INCLUDE := /usr/include/python3.11 /usr/lib/python3/dist-packages/numpy/core/include
PYTHON_LIBRARIES := boost_python311 python3.11
PYTHON_LIB := /usr/lib
INCLUDE_DIRS := $(PYTHON_INCLUDE) /usr/local/include /usr/include/hdf5/serial
LIBRARY_DIRS := $(PYTHON_LIB) /usr/local/lib /usr/lib /usr/lib/x86_64-linux-gnu/hdf5/serial
BUILD_DIR := build
DISTRIBUTE_DIR := distribute
Q ?= @
EOF
}

build() {
    if [ -f "$SRC/python/caffe/_caffe.so" ]; then
        echo "Caffe already built in $SRC"
        return
    fi
    (cd "$SRC" && make -j"$JOBS" pycaffe)
    test -f "$SRC/python/caffe/_caffe.so"
}

goldens() {
    # OMP/OpenBLAS at one thread: deterministic summation order, shared machine.
    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 GLOG_minloglevel=2 \
        PYTHONPATH="$SRC/python" /usr/bin/python3 "$REPO/scripts/caffe_goldens.py" \
        --out "$REPO/tests/goldens/caffe" \
        --reference "$REPO/../shared/reference/fcn-berkeleyvision" \
        --caffe-commit "$CAFFE_COMMIT" \
        --save-alexnet "$CACHE/voc-fcn-alexnet-seeded.caffemodel"
}

mkdir -p "$CACHE"
case "$MODE" in
    --build) install_deps; get_source; build ;;
    --goldens) goldens ;;
    all) install_deps; get_source; build; goldens ;;
    *) echo "usage: $0 [--build|--goldens]" >&2; exit 2 ;;
esac
