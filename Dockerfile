# The streamrec image: the worker, the producers and the replay tools.
#   docker build -t streamrec .
#   docker run --rm streamrec streamrec --help
# docker-compose.yml runs it as the `worker` and `producer` services.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Only what the package needs; tests, docs and scripts stay out of the image.
COPY pyproject.toml README.md ./
COPY config/ config/
COPY models/ models/
COPY producers/ producers/
COPY streams/ streams/
RUN pip install .

# An unprivileged user; the worker keeps its state under /app/.run. The
# model's compiled kernels are cached in /app/.numba, filled at build time so
# that a worker starts without compiling them (python -m models.warmup).
ENV NUMBA_CACHE_DIR=/app/.numba
RUN useradd --create-home --uid 10001 streamrec \
    && mkdir -p /app/.run /app/.numba \
    && chown streamrec /app/.run /app/.numba
USER streamrec
RUN python -m models.warmup

# The worker's HTTP API and Prometheus metrics (STREAMREC_WEB_PORT).
EXPOSE 6066
CMD ["streamrec", "worker"]
