# CUDA worker image: runs Fisher and merge jobs on the GPU (RQ forks a work horse per job, so
# the worker process itself never initialises CUDA).
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
# SIGTERM: finish the current job, then exit; a second SIGTERM stops the job
STOPSIGNAL SIGTERM
ENTRYPOINT ["fisher-merge"]
CMD ["worker", "--queues", "fisher,merge"]
