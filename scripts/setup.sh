#!/usr/bin/env bash
# Creates .venv with the DAG side, the training side and the project itself.
# Idempotent: each step is skipped when a stamp says it is already done.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3.11}
VENV=$ROOT/.venv
CACHE=${TLPIPE_CACHE:-$HOME/.cache/tlpipe}
HOROVOD_VERSION=0.28.1
TF_VERSION=2.21.0
PATCH=$ROOT/third_party/horovod/0001-drop-xla-mpi-ops.patch
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_CACHE_DIR=${PIP_CACHE_DIR:-$HOME/.cache/pip}

log() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }
hash_of() { cat "$@" | sha256sum | cut -c1-16; }

if ! command -v "$PY" >/dev/null; then
  echo "setup: $PY not found; install Python 3.11 or set PYTHON=/path/to/python3.11" >&2
  exit 1
fi

if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q -U pip setuptools wheel
fi
PIP="$VENV/bin/pip"

# 1. Pinned dependencies (requirements/*.in resolved into requirements/constraints.txt).
REQ_HASH=$(hash_of requirements/*.in requirements/constraints.txt)
if [ "$(cat "$VENV/.deps-stamp" 2>/dev/null)" != "$REQ_HASH" ]; then
  log "installing pinned dependencies (first run: ~2.2 GB)"
  "$PIP" install -q -c requirements/constraints.txt \
    -r requirements/airflow.in -r requirements/training.in -r requirements/dev.in
  echo "$REQ_HASH" > "$VENV/.deps-stamp"
fi

# 2. Horovod: no wheels on PyPI, so build one from the sdist once and cache it outside the clone.
PATCH_HASH=$(hash_of "$PATCH")
WHEEL_DIR=$CACHE/wheels/horovod-$HOROVOD_VERSION-tf$TF_VERSION-$PATCH_HASH
if ! "$VENV/bin/python" -c "import horovod.tensorflow" 2>/dev/null; then
  if ! ls "$WHEEL_DIR"/horovod-*.whl >/dev/null 2>&1; then
    log "building Horovod $HOROVOD_VERSION with TensorFlow + Gloo (about 10 minutes on 2 cores)"
    "$PIP" install -q "cmake>=3.13"
    BUILD=$(mktemp -d)
    trap 'rm -rf "$BUILD"' EXIT
    "$PIP" download -q --no-deps --no-binary :all: "horovod==$HOROVOD_VERSION" -d "$BUILD"
    tar -xzf "$BUILD/horovod-$HOROVOD_VERSION.tar.gz" -C "$BUILD"
    (cd "$BUILD/horovod-$HOROVOD_VERSION" && patch -p1 < "$PATCH")
    mkdir -p "$WHEEL_DIR"
    PATH="$VENV/bin:$PATH" \
    CMAKE_POLICY_VERSION_MINIMUM=3.5 \
    HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1 \
    HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 HOROVOD_CPU_OPERATIONS=gloo \
    MAKEFLAGS="-j$(nproc)" \
      "$PIP" wheel --no-build-isolation --no-deps -w "$WHEEL_DIR" "$BUILD/horovod-$HOROVOD_VERSION"
  fi
  log "installing Horovod from $WHEEL_DIR"
  "$PIP" install -q --no-deps "$WHEEL_DIR"/horovod-*.whl
  # Horovod's runtime dependencies (horovodrun needs cloudpickle, psutil, pyyaml).
  "$PIP" install -q -c requirements/constraints.txt cloudpickle psutil pyyaml packaging
fi

# 3. The SageMaker Python SDK and training toolkit, in their own environment (their pins clash with Airflow's),
# for the tests that drive localcloud as a SageMaker user would.
SDK_VENV=$ROOT/.venv-sagemaker
SDK_HASH=$(hash_of requirements/sagemaker-sdk.txt)
if [ "$(cat "$SDK_VENV/.deps-stamp" 2>/dev/null)" != "$SDK_HASH" ]; then
  log "installing the SageMaker Python SDK into $SDK_VENV"
  [ -x "$SDK_VENV/bin/python" ] || "$PY" -m venv "$SDK_VENV"
  "$SDK_VENV/bin/pip" install -q -r requirements/sagemaker-sdk.txt
  echo "$SDK_HASH" > "$SDK_VENV/.deps-stamp"
fi

# 4. The project itself, editable, so `python -m training.…` works from anywhere.
# Checked from / so that the clone's own folders on the current path do not pass for an installed package.
if ! (cd / && "$VENV/bin/python" -c "import training, plugins, localcloud, os, sys; sys.exit(0 if all(os.path.dirname(m.__file__).startswith('$ROOT/') for m in (training, plugins, localcloud)) else 1)") 2>/dev/null; then
  log "installing the project (editable)"
  "$PIP" install -q --no-deps --no-build-isolation -e .
fi
log "ready: $VENV"
