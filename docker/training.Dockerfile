# syntax=docker/dockerfile:1
# Pretraining image: TensorFlow 2.21 (GPU), Horovod 0.28.1 (NCCL GPU operations; MPI and Gloo controllers),
# OpenMPI, the project's training package, and sshd for Kubeflow MPIJob workers, all run as uid 1000.
#
#   docker build -f docker/training.Dockerfile -t registry.tlpipe.internal/tlpipe/train:0.1.0 .
#
# Build context: the repository root. Layers go from rarely to often changed: system packages, pinned Python
# dependencies, Horovod, then the project's source.

ARG CUDA_VERSION=12.5.1
ARG UBUNTU_VERSION=ubuntu22.04

# ---------------------------------------------------------------------------------------------------------------
# build: a virtual environment with the pinned dependencies and a Horovod wheel built from the sdist.
FROM nvidia/cuda:${CUDA_VERSION}-cudnn-devel-${UBUNTU_VERSION} AS build

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      python3.11 python3.11-dev python3.11-venv \
      build-essential patch ca-certificates \
      libopenmpi-dev openmpi-bin \
 && rm -rf /var/lib/apt/lists/*

RUN python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:${PATH} \
    VIRTUAL_ENV=/opt/venv

WORKDIR /build

# Pinned dependencies first: this layer is rebuilt only when the requirements change. The GPU build of
# TensorFlow replaces the CPU wheel used on development machines; the local Horovod wheel pinned by path in
# constraints.txt is built below instead.
ARG TF_VERSION=2.21.0
COPY requirements/constraints.txt requirements/training.in /build/requirements/
COPY docker/cuda-constraints.txt /build/docker/cuda-constraints.txt
# hadolint ignore=DL3013
RUN grep -v -E '^(horovod|tlpipe)[ =@]' requirements/constraints.txt > /build/constraints.txt \
 && grep -v -E '^tensorflow-cpu' requirements/training.in > /build/training-gpu.in \
 && pip install -U pip setuptools wheel \
 && pip install -c /build/constraints.txt -c /build/docker/cuda-constraints.txt \
      "tensorflow[and-cuda]==${TF_VERSION}" -r /build/training-gpu.in \
      cloudpickle psutil pyyaml packaging

# Horovod publishes no wheels. Same recipe as scripts/setup.sh (the project's patch for TF 2.21 and
# CMAKE_POLICY_VERSION_MINIMUM for cmake 4), plus NCCL for GPU collectives and MPI for mpirun launchers.
ARG HOROVOD_VERSION=0.28.1
COPY third_party/horovod/0001-drop-xla-mpi-ops.patch /build/0001-drop-xla-mpi-ops.patch
# hadolint ignore=DL3013
RUN pip install "cmake>=3.13" \
 && pip download --no-deps --no-binary :all: "horovod==${HOROVOD_VERSION}" -d /build/src \
 && tar -xzf "/build/src/horovod-${HOROVOD_VERSION}.tar.gz" -C /build/src \
 && patch -d "/build/src/horovod-${HOROVOD_VERSION}" -p1 < /build/0001-drop-xla-mpi-ops.patch \
 && CMAKE_POLICY_VERSION_MINIMUM=3.5 \
    HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1 \
    HOROVOD_GPU_OPERATIONS=NCCL HOROVOD_NCCL_LINK=SHARED HOROVOD_CUDA_HOME=/usr/local/cuda \
    HOROVOD_WITH_MPI=1 HOROVOD_WITH_GLOO=1 \
    MAKEFLAGS="-j$(nproc)" \
    pip wheel --no-build-isolation --no-deps -w /build/wheels "/build/src/horovod-${HOROVOD_VERSION}" \
 && pip install --no-deps /build/wheels/horovod-*.whl \
 && pip uninstall -y cmake

# ---------------------------------------------------------------------------------------------------------------
# runtime: CUDA + cuDNN + NCCL runtime libraries, OpenMPI, sshd; no compilers.
FROM nvidia/cuda:${CUDA_VERSION}-cudnn-runtime-${UBUNTU_VERSION} AS runtime

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV DEBIAN_FRONTEND=noninteractive

# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      python3.11 ca-certificates \
      openmpi-bin libopenmpi3 \
      openssh-server openssh-client \
 && rm -rf /var/lib/apt/lists/* \
 && rm -f /etc/ssh/ssh_host_*

# The user every container of this image runs as; config/pipeline.yaml (kubernetes.run_as_user) uses the same ids.
ARG USER_NAME=mpiuser
ARG USER_UID=1000
ARG USER_GID=1000
RUN groupadd --gid "${USER_GID}" "${USER_NAME}" \
 && useradd --uid "${USER_UID}" --gid "${USER_GID}" --create-home --shell /bin/bash "${USER_NAME}"

# sshd for MPIJob workers: the user's own config and an empty host-key directory. start-sshd generates the host
# keys when each worker starts: keys made at build time would be shared by every container of the image.
COPY docker/mpi/ssh_config /etc/ssh/ssh_config.d/mpijob.conf
COPY --chown=1000:1000 docker/mpi/sshd_config /home/mpiuser/.sshd_config
COPY --chmod=0755 docker/mpi/start-sshd /usr/local/bin/start-sshd
RUN mkdir -p /home/mpiuser/.sshd \
 && chown -R "${USER_UID}:${USER_GID}" /home/mpiuser/.sshd \
 && chmod 700 /home/mpiuser/.sshd

COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:${PATH} \
    VIRTUAL_ENV=/opt/venv \
    PYTHONUNBUFFERED=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    OMPI_MCA_btl_vader_single_copy_mechanism=none
# Fails the build unless Horovod loads here with every controller and GPU operation it was built for.
RUN python -c "import horovod.tensorflow as hvd, sys; \
sys.exit(0 if hvd.mpi_built() and hvd.gloo_built() and hvd.nccl_built() else 'Horovod lacks MPI, Gloo or NCCL')"

# The project last: a source change rebuilds only this layer.
WORKDIR /opt/tlpipe
COPY pyproject.toml README.md /opt/tlpipe/
COPY training/ /opt/tlpipe/training/
RUN pip install --no-cache-dir --no-deps --no-build-isolation /opt/tlpipe \
 && rm -rf /opt/tlpipe/build /opt/tlpipe/*.egg-info \
 && python -c "import training.pretrain"

USER 1000:1000
WORKDIR /home/mpiuser
EXPOSE 2222
# No entrypoint: pods and MPIJobs give the command (horovodrun … for launchers, sshd for workers).
ENTRYPOINT []
CMD ["python", "-m", "training.pretrain", "--help"]
