#!/usr/bin/env bash
# Make sure the services the test suite talks to are up.
#
#   scripts/services.sh check
#
# Postgres: host/port of $TEST_DATABASE_URL (default 127.0.0.1:5432).
# Redis:    host/port of $TEST_REDIS_URL    (default 127.0.0.1:6379).
# RabbitMQ: host/port of $TEST_AMQP_URL     (default 127.0.0.1:5672): the end-to-end tests
#           that run Chorus on RabbitMQ (tests/e2e/test_rabbitmq.py, test_procfile.py).
# If one is down, it is local, and we are root on a machine that has it installed, start it
# and wait up to ~20 s. Otherwise say what is missing and how to start it, and exit 1.
set -euo pipefail

PG_START='pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start'
RABBITMQ_START='rabbitmq-server -detached'
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

rabbitmq_up() {
    # The AMQP port opens once the broker is ready to take connections.
    tcp_open "$AMQP_HOST" "$AMQP_PORT"
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

can_start_rabbitmq() {
    is_local "$AMQP_HOST" && [[ $AMQP_PORT == 5672 && $EUID -eq 0 ]] \
        && command -v rabbitmq-server >/dev/null 2>&1
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
    read -r AMQP_HOST AMQP_PORT < <(host_port "${TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/}" 5672)

    local pg_ok=1 redis_ok=1 amqp_ok=1
    postgres_up || pg_ok=0
    redis_up || redis_ok=0
    rabbitmq_up || amqp_ok=0

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

    if ((!amqp_ok)) && can_start_rabbitmq; then
        echo "services: RabbitMQ is down at $AMQP_HOST:$AMQP_PORT; starting it" >&2
        eval "$RABBITMQ_START" >&2 || true
        # An Erlang node takes longer to boot than the others.
        WAIT_SECONDS=60 wait_for rabbitmq_up && amqp_ok=1
    fi

    if ((pg_ok && redis_ok && amqp_ok)); then
        echo "services: PostgreSQL at $PG_HOST:$PG_PORT, Redis at $REDIS_HOST:$REDIS_PORT and RabbitMQ at $AMQP_HOST:$AMQP_PORT are up"
        return 0
    fi

    {
        echo
        echo "services: the test suite needs real PostgreSQL, Redis and RabbitMQ, and some are not reachable:"
        ((pg_ok)) || echo "  - PostgreSQL at $PG_HOST:$PG_PORT (from TEST_DATABASE_URL) is not accepting connections"
        ((redis_ok)) || echo "  - Redis at $REDIS_HOST:$REDIS_PORT (from TEST_REDIS_URL) is not answering"
        ((amqp_ok)) || echo "  - RabbitMQ at $AMQP_HOST:$AMQP_PORT (from TEST_AMQP_URL) is not accepting connections"
        echo
        echo "Start them, then run make test again. Debian's packages, default ports (as root):"
        ((pg_ok)) || echo "    $PG_START"
        ((redis_ok)) || echo "    $REDIS_START"
        ((amqp_ok)) || echo "    $RABBITMQ_START"
        echo "or with Docker (SECRET_KEY and FLOWER_BASIC_AUTH set, e.g. cp .env.example .env):"
        echo "    docker compose --profile rabbitmq up -d postgres redis rabbitmq"
        echo "and point the suite at them, e.g."
        echo "    export TEST_DATABASE_URL=postgresql://chorus:chorus@127.0.0.1:5432/chorus"
    } >&2
    return 1
}

case "${1:-}" in
    check) check ;;
    *) usage ;;
esac
