# One image for every Chorus process (config/topology.py: web, release, worker, worker_sync,
# webhooks, scheduler, sim, flower); the command chooses it (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Only what the package needs: copying the whole context would drag in .venv/ and var/.
# The sources stay in /app too, so relative paths such as config/catalog.yaml resolve.
COPY pyproject.toml README.md ./
COPY app ./app
COPY workers ./workers
COPY config ./config

# [ops] adds Flower. All runtime dependencies ship wheels (psycopg2-binary included), so no
# compiler is needed in the image.
RUN pip install '.[ops]'

# Run as an unprivileged user. var/ is the only place Chorus writes locally; audio goes to
# STORAGE_URL.
RUN useradd --create-home --uid 10001 --user-group chorus \
    && mkdir -p /app/var \
    && chown chorus:chorus /app/var
USER chorus

# Servers listen beyond the container's loopback.
ENV CHORUS_VAR_DIR=/app/var \
    WEB_HOST=0.0.0.0 \
    SIM_HOST=0.0.0.0
EXPOSE 8000

# The API; its processes and threads come from settings (WEB_CONCURRENCY, WEB_THREADS, PORT),
# as in every other shape. `chorus web` execs gunicorn, which then gets the signals.
CMD ["chorus", "web"]
