# API image: CPU only; it validates requests and enqueues jobs, it never merges.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 FM_DEVICE=cpu
WORKDIR /srv
RUN pip install "torch>=2.4" --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY app ./app
COPY workers ./workers
RUN pip install .

USER 1000:1000
ENTRYPOINT ["fisher-merge"]
CMD ["--help"]
