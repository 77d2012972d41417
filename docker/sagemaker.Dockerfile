# syntax=docker/dockerfile:1
# SageMaker image: fine-tuning (`train`) and the endpoint server (`serve`, port 8080) for the domain model.
#
#   docker build -f docker/sagemaker.Dockerfile -t <account>.dkr.ecr.<region>.amazonaws.com/tlpipe-sagemaker:0.1.0 .
#
# One image serves both container contracts: SageMaker runs `docker run IMAGE train` for a training job and
# `docker run IMAGE serve` for an endpoint. Targets:
#   sagemaker   (default, last stage) the image pushed to ECR
#   localcloud  the same plus the local SageMaker/S3 stand-in, for docker-compose; build it on CPU-only machines
#               with --build-arg BASE_IMAGE=ubuntu:22.04 --build-arg TF_REQUIREMENT=tensorflow-cpu==2.21.0
#
# It runs as root: SageMaker mounts /opt/ml (model, input channels, output) owned by root and requires inference
# containers to run as root.

ARG BASE_IMAGE=nvidia/cuda:12.5.1-cudnn-runtime-ubuntu22.04

# ---------------------------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS deps

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*

RUN python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:${PATH} \
    VIRTUAL_ENV=/opt/venv

# Pinned dependencies before the source, so a code change does not reinstall TensorFlow.
ARG TF_REQUIREMENT="tensorflow[and-cuda]==2.21.0"
WORKDIR /build
COPY requirements/constraints.txt requirements/training.in /build/requirements/
COPY docker/cuda-constraints.txt /build/docker/cuda-constraints.txt
# hadolint ignore=DL3013
RUN grep -v -E '^(horovod|tlpipe)[ =@]' requirements/constraints.txt > /build/constraints.txt \
 && grep -v -E '^tensorflow-cpu' requirements/training.in > /build/training.in \
 && pip install -U pip setuptools wheel \
 && pip install -c /build/constraints.txt -c /build/docker/cuda-constraints.txt \
      "${TF_REQUIREMENT}" -r /build/training.in

# ---------------------------------------------------------------------------------------------------------------
FROM deps AS app

WORKDIR /opt/tlpipe
COPY pyproject.toml README.md /opt/tlpipe/
COPY training/ /opt/tlpipe/training/
RUN pip install --no-cache-dir --no-deps --no-build-isolation /opt/tlpipe \
 && rm -rf /opt/tlpipe/build /opt/tlpipe/*.egg-info \
 && python -c "import training.finetune, training.serve"

# The container contracts' commands, on PATH.
COPY --chmod=0755 docker/sagemaker/train docker/sagemaker/serve /usr/local/bin/
ENV PYTHONUNBUFFERED=1 \
    TF_CPP_MIN_LOG_LEVEL=2
WORKDIR /opt/ml

# ---------------------------------------------------------------------------------------------------------------
# localcloud: S3, CloudWatch Logs and SageMaker on one port; its training jobs and endpoints run this image's
# train/serve commands as local processes.
FROM app AS localcloud

# hadolint ignore=DL3013
RUN pip install -c /build/constraints.txt "moto[server]" psutil regex
COPY localcloud/ /opt/tlpipe/localcloud/
ENV PYTHONPATH=/opt/tlpipe
VOLUME ["/data"]
EXPOSE 4566
ENTRYPOINT []
CMD ["python", "-m", "localcloud", "--host", "0.0.0.0", "--port", "4566", "--data-dir", "/data"]

# ---------------------------------------------------------------------------------------------------------------
FROM app AS sagemaker

LABEL com.amazonaws.sagemaker.capabilities.accept-bind-to-port=true \
      com.amazonaws.sagemaker.capabilities.multi-models=false
EXPOSE 8080
# No entrypoint: SageMaker's `train` / `serve` argument is the command itself.
ENTRYPOINT []
CMD ["serve"]
