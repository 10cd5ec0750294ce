# headscope server, CPU only.
#   docker build -t headscope .
#   docker compose up            (see docker-compose.yml: volumes, settings, port on 127.0.0.1)
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# A C compiler for the fused attention kernel and the tagger's word loop, which headscope builds
# at first start for the CPU it runs on (kept in HEADSCOPE_KERNEL_CACHE; without a compiler they
# fall back to torch ops and to Python).
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*

# torch first, alone, from PyTorch's CPU wheel index: the project's own install then finds it
# satisfied and never pulls a CUDA build (gigabytes this service has no use for).
RUN pip install "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu

COPY pyproject.toml README.md ./
COPY service ./service
COPY clients ./clients
# HEADSCOPE_EXTRAS=server,ray for the Ray images (docker compose --profile ray).
ARG HEADSCOPE_EXTRAS=server
RUN pip install ".[${HEADSCOPE_EXTRAS}]" \
    && python -c "import torch, sys; sys.exit(1 if torch.version.cuda else 0)"

# An unprivileged user owns the two writable places: the probe store and the download caches
# (Hugging Face hub: model and TinyStories text; NLTK: the POS tagger). Both are volumes in
# docker-compose.yml, so downloads and trained probes survive a rebuild.
RUN useradd --create-home --uid 10001 headscope \
    && mkdir -p /data/models_store /data/cache/huggingface /data/cache/nltk_data \
    && chown -R headscope:headscope /data
USER headscope

# 0.0.0.0 inside the container, so the published port reaches it; docker-compose.yml publishes
# it on the host's 127.0.0.1 only. Set HEADSCOPE_API_KEY before publishing it any wider.
ENV HEADSCOPE_HOST=0.0.0.0 \
    HEADSCOPE_PORT=8000 \
    HEADSCOPE_STORE=/data/models_store \
    HEADSCOPE_KERNEL_CACHE=/data/cache/headscope-kernels \
    HF_HOME=/data/cache/huggingface \
    NLTK_DATA=/data/cache/nltk_data

EXPOSE 8000
# Ready = model (and probes) loaded. The first start downloads the model, the tagger and the
# corpus, and may train probes: hence the long start period.
HEALTHCHECK --interval=30s --timeout=5s --start-period=15m --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('HEADSCOPE_PORT', '8000') + '/readyz', timeout=4)"]
# uvicorn drains in-flight requests on SIGTERM for HEADSCOPE_DRAIN_TIMEOUT seconds.
STOPSIGNAL SIGTERM
CMD ["headscope", "serve"]
