#!/usr/bin/env bash
# Make sure the services the test suite talks to are up.
#
#   scripts/services.sh check
#
# Postgres: host/port of $TEST_DATABASE_URL (default 127.0.0.1:5432).
# Redis:    host/port of $TEST_REDIS_URL    (default 127.0.0.1:6379).
# If one is down, it is local, and we are root on a machine that has it installed, start it
# and wait up to ~20 s. Otherwise say what is missing and how to start it, and exit 1.
set -euo pipefail

PG_START='pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start'
REDIS_START='redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log'
WAIT_SECONDS=20

usage() {
    echo "usage: $0 check" >&2
    exit 2
}

# host_port URL DEFAULT_PORT -> "host port" (userinfo, path and query stripped; [v6] unwrapped).
host_port() {
    local url=$1 default_port=$2 rest host port
    rest=${url#*://}
    rest=${rest%%/*}
    rest=${rest%%\?*}
    rest=${rest##*@}
    if [[ $rest == \[* ]]; then
        host=${rest%%]*}
        host=${host#[}
        port=${rest#*]}
        port=${port#:}
    elif [[ $rest == *:* ]]; then
        host=${rest%%:*}
        port=${rest##*:}
    else
        host=$rest
        port=
    fi
    echo "${host:-127.0.0.1} ${port:-$default_port}"
}

tcp_open() {
    # bash's /dev/tcp, in a subshell under timeout so a black-holed host cannot hang us.
    timeout 2 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null
}

postgres_up() {
    if command -v pg_isready >/dev/null 2>&1; then
        # 0 = accepting connections; 1 (still starting) counts as down so we keep waiting.
        pg_isready -q -h "$PG_HOST" -p "$PG_PORT" -t 2
    else
        tcp_open "$PG_HOST" "$PG_PORT"
    fi
}

redis_up() {
    if command -v redis-cli >/dev/null 2>&1; then
        [[ $(redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" ping 2>/dev/null) == PONG ]]
    else
        tcp_open "$REDIS_HOST" "$REDIS_PORT"
    fi
}

is_local() {
    [[ $1 == 127.0.0.1 || $1 == localhost || $1 == ::1 ]]
}

# Only the machine's own default instance can be started by the commands above, so only try
# when the suite points at it, we may (root), and it is installed.
can_start_postgres() {
    is_local "$PG_HOST" && [[ $PG_PORT == 5432 && $EUID -eq 0 ]] \
        && command -v pg_ctlcluster >/dev/null 2>&1 \
        && [[ -n $(ls /etc/postgresql 2>/dev/null) ]]
}

can_start_redis() {
    is_local "$REDIS_HOST" && [[ $REDIS_PORT == 6379 && $EUID -eq 0 ]] \
        && command -v redis-server >/dev/null 2>&1
}

wait_for() {
    local i
    for ((i = 0; i < WAIT_SECONDS; i++)); do
        "$1" && return 0
        sleep 1
    done
    "$1"
}

check() {
    read -r PG_HOST PG_PORT < <(host_port "${TEST_DATABASE_URL:-postgresql://127.0.0.1:5432/chorus_test}" 5432)
    read -r REDIS_HOST REDIS_PORT < <(host_port "${TEST_REDIS_URL:-redis://127.0.0.1:6379/15}" 6379)

    local pg_ok=1 redis_ok=1
    postgres_up || pg_ok=0
    redis_up || redis_ok=0

    if ((!pg_ok)) && can_start_postgres; then
        echo "services: PostgreSQL is down at $PG_HOST:$PG_PORT; starting it" >&2
        eval "$PG_START" >&2 || true
        wait_for postgres_up && pg_ok=1
    fi
    if ((!redis_ok)) && can_start_redis; then
        echo "services: Redis is down at $REDIS_HOST:$REDIS_PORT; starting it" >&2
        eval "$REDIS_START" >&2 || true
        wait_for redis_up && redis_ok=1
    fi

    if ((pg_ok && redis_ok)); then
        echo "services: PostgreSQL at $PG_HOST:$PG_PORT and Redis at $REDIS_HOST:$REDIS_PORT are up"
        return 0
    fi

    {
        echo
        echo "services: the test suite needs real PostgreSQL and Redis, and some are not reachable:"
        ((pg_ok)) || echo "  - PostgreSQL at $PG_HOST:$PG_PORT (from TEST_DATABASE_URL) is not accepting connections"
        ((redis_ok)) || echo "  - Redis at $REDIS_HOST:$REDIS_PORT (from TEST_REDIS_URL) is not answering"
        echo
        echo "Start them, then run make test again. Debian's packages, default ports (as root):"
        ((pg_ok)) || echo "    $PG_START"
        ((redis_ok)) || echo "    $REDIS_START"
        echo "or with Docker (SECRET_KEY and FLOWER_BASIC_AUTH set, e.g. cp .env.example .env):"
        echo "    docker compose up -d postgres redis"
        echo "and point the suite at them, e.g."
        echo "    export TEST_DATABASE_URL=postgresql://chorus:chorus@127.0.0.1:5432/chorus"
    } >&2
    return 1
}

case "${1:-}" in
    check) check ;;
    *) usage ;;
esac
