# Sourced by .ci/run. Exports the service URLs of ../shared/DESIGN.md and starts any
# local service that is not answering, with the commands from the machine notes.
# The foundation's tests use none of them; the Redis/MySQL/PostgreSQL backends read
# these variables, and REDRAIN_REQUIRE_SERVICES=1 turns their "skipped" into "failed".

export REDRAIN_REDIS_URL="${REDRAIN_REDIS_URL:-redis://127.0.0.1:6379}"
export REDRAIN_MYSQL_URL="${REDRAIN_MYSQL_URL:-mysql://root@127.0.0.1:3306/test}"
export REDRAIN_POSTGRES_URL="${REDRAIN_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}"
export REDRAIN_REQUIRE_SERVICES=1

service_up() {
  case "$1" in
    redis) redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 ;;
    mariadb) mariadb-admin -h 127.0.0.1 -u root ping >/dev/null 2>&1 || mysqladmin -h 127.0.0.1 -u root ping >/dev/null 2>&1 ;;
    postgres) pg_isready -h 127.0.0.1 -p 5432 >/dev/null 2>&1 ;;
  esac
}

start_service() {
  case "$1" in
    redis) redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
             --dir /var/lib/redis --logfile /var/log/redis/ci.log ;;
    mariadb) start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd ;;
    postgres) pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start ;;
  esac
}

start_services() {
  local name tries
  for name in redis mariadb postgres; do
    if service_up "$name"; then
      echo "ci: $name is up"
      continue
    fi
    echo "ci: starting $name"
    start_service "$name" || echo "ci: could not start $name (tests that need it will say so)"
    for tries in $(seq 1 30); do
      service_up "$name" && break
      sleep 1
    done
    service_up "$name" && echo "ci: $name is up" || echo "ci: $name is still down"
  done
}

# Chromium (Debian's package) for the test that renders a report headless and
# looks at the screenshot (simulator/tests/report.rs); installed when missing.
ensure_chromium() {
  if [ -x /usr/bin/chromium ]; then
    echo "ci: chromium is installed"
    return
  fi
  echo "ci: installing chromium"
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium >/dev/null 2>&1 \
    || { apt-get update >/dev/null 2>&1 \
         && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium >/dev/null 2>&1; } \
    || echo "ci: could not install chromium (the screenshot test will fail under REDRAIN_REQUIRE_SERVICES)"
}

# wrk (Debian's package), the baseline `redrain bench http` and its test measure
# the load driver against; installed when missing.
ensure_wrk() {
  if command -v wrk >/dev/null 2>&1; then
    echo "ci: wrk is installed"
    return
  fi
  echo "ci: installing wrk"
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends wrk >/dev/null 2>&1 \
    || { apt-get update >/dev/null 2>&1 \
         && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends wrk >/dev/null 2>&1; } \
    || echo "ci: could not install wrk (the HTTP benchmark test will fail under REDRAIN_REQUIRE_SERVICES)"
}
