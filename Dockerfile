# One image for every Chorus process (web, workers, scheduler, flower, sim, release); the process is
# chosen by the command (see docker-compose.yml and the Procfile).
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

# Run as an unprivileged user. var/ (SQLite in the embedded mode, audio files) is the only
# place Chorus writes; a named volume mounted there inherits this owner.
RUN useradd --create-home --uid 10001 --user-group chorus \
    && mkdir -p /app/var \
    && chown chorus:chorus /app/var
USER chorus

ENV CHORUS_VAR_DIR=/app/var
EXPOSE 8000

# sh -c so the same knobs as the Procfile's web line apply; exec so gunicorn gets the signals.
CMD ["sh", "-c", "exec gunicorn --worker-class gthread --workers ${WEB_CONCURRENCY:-2} --threads ${WEB_THREADS:-8} --bind 0.0.0.0:${PORT:-8000} --access-logfile - app.wsgi:app"]
