# API image: CPU only; it validates requests, looks Fishers up in the cache and enqueues jobs;
# it never merges or computes.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 FM_DEVICE=cpu
WORKDIR /srv
RUN pip install "torch>=2.4" --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY app ./app
COPY workers ./workers
RUN pip install .

RUN mkdir -p /var/cache/fisher-merge && chown 1000:1000 /var/cache/fisher-merge
ENV FM_MODEL_CACHE_DIR=/var/cache/fisher-merge/models HOME=/var/cache/fisher-merge

USER 1000:1000
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --retries=6 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=3)"
ENTRYPOINT ["fisher-merge"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
