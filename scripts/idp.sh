#!/usr/bin/env bash
# idp.sh — the real OIDC provider the token tests run (crates/portcullis-testkit/idp/).
#
#   scripts/idp.sh install    `npm ci` in the fixture: npm's oidc-provider, pinned by its
#                             package-lock.json, into its node_modules (a few seconds, 3.4 MB)
#   scripts/idp.sh status     exit 0 when node and the installed package are there
#   scripts/idp.sh run        run the provider in the foreground (IDP_PORT, IDP_AUDIENCE, IDP_ALG,
#                             IDP_CLIENTS: see idp.mjs), e.g. to try a config by hand
#
# Needs `node` and `npm` (Debian packages nodejs and npm; .ci/run installs them). The tests
# start the provider themselves (portcullis_testkit::OidcProvider) on a free loopback port.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly FIXTURE="$ROOT/crates/portcullis-testkit/idp"

say() { printf '[idp.sh] %s\n' "$*" >&2; }

installed() {
  command -v node >/dev/null 2>&1 && [ -f "$FIXTURE/node_modules/oidc-provider/package.json" ]
}

# Whether node_modules matches the lock file: npm writes its own copy of the lock there.
up_to_date() {
  installed && cmp -s "$FIXTURE/package-lock.json" "$FIXTURE/node_modules/.package-lock.json.source" 2>/dev/null
}

install() {
  if up_to_date; then say "oidc-provider is installed"; return 0; fi
  for tool in node npm; do
    if ! command -v "$tool" >/dev/null 2>&1; then
      say "\`$tool\` is missing: apt-get install nodejs npm"
      return 1
    fi
  done
  say "npm ci in $FIXTURE"
  (cd "$FIXTURE" && npm ci --no-audit --no-fund --loglevel=error) >&2
  cp "$FIXTURE/package-lock.json" "$FIXTURE/node_modules/.package-lock.json.source"
}

case "${1:-}" in
  install) install ;;
  status)
    if installed; then say "node $(node --version), oidc-provider installed"; else say "not installed"; exit 1; fi
    ;;
  run)
    installed || { say "not installed: scripts/idp.sh install"; exit 1; }
    exec node "$FIXTURE/idp.mjs"
    ;;
  *)
    sed -n '2,11p' "${BASH_SOURCE[0]}" >&2
    exit 2
    ;;
esac
