# kubevae: one image for the KFP components (base_image), the PyTorchJob and Katib trials, and the
# KServe predictor. CPU by default; CUDA through the PyTorch wheel index:
#   docker build -t IMAGE .
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 -t IMAGE-cuda .
# PyTorch's CUDA wheels carry the CUDA runtime; the node's NVIDIA driver comes through the
# NVIDIA container toolkit, so the same slim base serves both.
#
# Base: python:3.11-slim-bookworm pinned by its multi-arch index digest (the digest MLflow's own
# docker/Dockerfile.full pins). Refresh it with:
#   docker buildx imagetools inspect python:3.11-slim-bookworm
ARG BASE_IMAGE=python:3.11-slim-bookworm@sha256:d29f48a31a8b408ed19272ca1e7b10ebae13b240a27e862d3d4217c528e2e0c3
FROM ${BASE_IMAGE}

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp

RUN python -m venv /opt/venv
WORKDIR /opt/kubevae

# What `make install` installs, minus the test extra: torch from the chosen wheel index, the
# project under constraints.txt, then kubeflow-katib without its protobuf<5 pin (see Makefile).
COPY pyproject.toml constraints.txt README.md ./
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==$(sed -n 's/.*"torch==\([^"]*\)".*/\1/p' pyproject.toml)"
COPY kubevae ./kubevae
COPY components ./components
COPY pipelines ./pipelines
COPY serving ./serving
RUN pip install -c constraints.txt . \
 && pip install --no-deps kubeflow-katib==0.19.0 \
 && python -c "import kubevae, components.k8s, pipelines, serving, kfp, kserve, kubeflow.katib, kubeflow.training"

# A numeric non-root user (pods run with runAsNonRoot and runAsUser 10001). The code is owned
# by root and read-only; HOME and scratch are /tmp, an emptyDir in every pod.
RUN groupadd --system --gid 10001 kubevae \
 && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home \
            --shell /usr/sbin/nologin kubevae
USER 10001:10001
WORKDIR /tmp
CMD ["kubevae", "--help"]
