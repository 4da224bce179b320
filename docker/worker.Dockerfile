# CUDA worker image: runs merges (and, later, Fisher jobs) on the GPU.
FROM nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04

ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH FM_DEVICE=auto

WORKDIR /srv
# torch first, from the CUDA index, so the project's `torch>=2.4` is already satisfied
RUN pip install "torch>=2.4" --index-url https://download.pytorch.org/whl/cu124
COPY pyproject.toml README.md ./
COPY app ./app
COPY workers ./workers
RUN pip install . \
    && mkdir -p /var/cache/fisher-merge && chown 1000:1000 /var/cache/fisher-merge
ENV FM_MODEL_CACHE_DIR=/var/cache/fisher-merge/models \
    FM_CACHE_URI=/var/cache/fisher-merge/store \
    HOME=/var/cache/fisher-merge

USER 1000:1000
ENTRYPOINT ["fisher-merge"]
CMD ["--help"]
