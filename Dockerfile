# Multi-stage build: dependencies are resolved with Poetry in a builder stage; the runtime
# image holds only the virtualenv and the application, and runs as an unprivileged user.
FROM python:3.11-slim AS builder
ENV PIP_NO_CACHE_DIR=1 POETRY_VIRTUALENVS_IN_PROJECT=true POETRY_NO_INTERACTION=1
RUN pip install 'poetry>=2.0,<3'
WORKDIR /app
COPY pyproject.toml poetry.lock README.md ./
RUN poetry install --only main --no-root
COPY backend ./backend
COPY alembic ./alembic
COPY alembic.ini ./
COPY examples ./examples
RUN poetry install --only main

FROM python:3.11-slim AS runtime
# jemalloc: `serve` runs under it when present, so memory goes back after a crowd leaves.
RUN apt-get update && apt-get install -y --no-install-recommends libjemalloc2 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 pgcast
WORKDIR /app
COPY --from=builder --chown=pgcast:pgcast /app /app
ENV PATH="/app/.venv/bin:$PATH" HOST=0.0.0.0 PORT=8000 PYTHONUNBUFFERED=1
USER pgcast
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz').status != 200)"
# `serve` applies pending migrations before it starts listening.
CMD ["pgcast", "serve"]
