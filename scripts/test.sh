#!/usr/bin/env bash
# The test command: install what is missing (dev tools, redis-server, PostgreSQL, RabbitMQ), lint, run
# every test. Integration tests start their own Redis, S3 server, Triton and Celery workers on free ports,
# use the PostgreSQL at INFERQ_TEST_POSTGRES_URL (default postgres@127.0.0.1:5432) for a fresh database,
# and the RabbitMQ at INFERQ_TEST_AMQP_URL (default guest@127.0.0.1:5672) for the RabbitMQ broker tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh --dev

tcp_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }
if [ -z "${INFERQ_TEST_POSTGRES_URL:-}" ] && ! tcp_open 127.0.0.1 5432; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    echo "test: installing PostgreSQL for the integration tests ..."
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >/dev/null
  fi
  version=$(ls /etc/postgresql | sort -V | tail -n1)
  $SUDO pg_ctlcluster --skip-systemctl-redirect "$version" main start 2>/dev/null || \
    $SUDO pg_ctlcluster "$version" main start
  # A password for TCP logins, used only by the tests on this machine.
  $SUDO su postgres -c "psql -q -c \"ALTER USER postgres PASSWORD 'postgres'\""
  export INFERQ_TEST_POSTGRES_URL="postgresql://postgres:postgres@127.0.0.1:5432/postgres"
fi

if [ -z "${INFERQ_TEST_AMQP_URL:-}" ] && ! tcp_open 127.0.0.1 5672; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  if ! command -v rabbitmq-server >/dev/null; then
    echo "test: installing RabbitMQ for the broker tests ..."
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq rabbitmq-server >/dev/null
  fi
  $SUDO rabbitmq-server -detached 2>/dev/null || true
  for _ in $(seq 1 60); do tcp_open 127.0.0.1 5672 && break; sleep 1; done
fi

.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
exec .venv/bin/pytest "$@"
