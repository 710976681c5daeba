#!/usr/bin/env bash
# The Virtual hosts page: a Vue remote built with Vite into the Python package's static files.
#   scripts/frontend.sh build   rebuild modoboa_pro/virtualhosts/static/virtualhosts (commit it)
#   scripts/frontend.sh check   rebuild elsewhere and fail if it differs from the package's copy
# An instance never needs Node: the built files ship in the wheel.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
frontend="$root/frontend"
shipped="$root/modoboa_pro/virtualhosts/static/virtualhosts"

need_node() {
  if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "Node.js >= 20.19 and npm are needed to build the frontend (Vite 8); none found." >&2
    exit 1
  fi
  local version
  version="$(node -p 'process.versions.node')"
  if ! node -e 'const [a,b]=process.versions.node.split(".").map(Number); process.exit(a>20||(a==20&&b>=19)?0:1)'; then
    echo "Node.js $version is too old: Vite 8 needs >= 20.19 (Debian 12's nodejs is 18)." >&2
    exit 1
  fi
}

install() {
  # npm ci only when the lock file changed since the last install.
  local stamp="$frontend/node_modules/.package-lock.json"
  if [ ! -f "$stamp" ] || [ "$frontend/package-lock.json" -nt "$stamp" ]; then
    (cd "$frontend" && npm ci --no-audit --no-fund --loglevel=error)
  fi
}

case "${1:-}" in
  build)
    need_node
    install
    (cd "$frontend" && npm run --silent build -- --logLevel warn)
    ;;
  check)
    need_node
    install
    fresh="$(mktemp -d)"
    trap 'rm -rf "$fresh"' EXIT
    (cd "$frontend" && npm run --silent check:i18n && npm test --silent)
    (cd "$frontend" && npm run --silent build -- --logLevel warn --outDir "$fresh/virtualhosts")
    if ! diff -r "$fresh/virtualhosts" "$shipped" >/dev/null; then
      diff -rq "$fresh/virtualhosts" "$shipped" >&2 || true
      echo "The built page in $shipped is not what frontend/ builds: run 'make frontend' and commit." >&2
      exit 1
    fi
    echo "frontend: the shipped build matches frontend/ sources"
    ;;
  *)
    echo "usage: $0 build|check" >&2
    exit 2
    ;;
esac
