#!/usr/bin/env bash
# test.sh — run every test of the workspace, with the optional real services when they can be had.
#
#   scripts/test.sh [extra cargo test args...]
#
# 1. Makes or refreshes .venv with the official `openai` and `anthropic` Python SDKs (pinned
#    below), which the SDK compatibility tests run. Offline, it warns loudly and goes on: those tests then skip
#    loudly (or fail when CI=true).
# 2. Installs the real OIDC provider the token tests run (scripts/idp.sh install: npm's
#    oidc-provider into crates/portcullis-testkit/idp/node_modules). Without node or offline, it
#    warns loudly and goes on: those tests then skip loudly (or fail when CI=true).
# 3. Points the real-model tests at a running real small model: PORTCULLIS_REAL_SLM_URL if you set
#    it, else scripts/real-slm.sh's server on port 8090 if it runs; with CI=true it is started
#    (and stopped again at the end) when it does not run.
# The authorizer tests also want nginx and Caddy (Debian: nginx-light, caddy; .ci/run installs
# them); without them those tests skip loudly (or fail when CI=true).
# 4. Runs `cargo test --workspace --locked --no-fail-fast` (every test binary runs even after a
#    failure, so one run shows every failure) and prints a summary. The exit code is cargo's.
set -euo pipefail

# Pinned: the SDK's wire behaviour (e.g. base64 embeddings by default) is part of what is tested.
readonly OPENAI_SDK_VERSION="2.54.0"
readonly ANTHROPIC_SDK_VERSION="2.17.0"
readonly SLM_PORT=8090

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

say() { printf '[test.sh] %s\n' "$*" >&2; }
loud() {
  printf '\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n' >&2
  printf '!!! %s\n' "$@" >&2
  printf '!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\n' >&2
}

# --- 1. the openai SDK --------------------------------------------------------------------------
sdk_status="missing"
setup_venv() {
  local python=.venv/bin/python
  if [ ! -x "$python" ]; then
    say "creating .venv"
    python3 -m venv .venv >&2 || { rm -rf .venv; return 1; }
  fi
  if "$python" -c "import openai, anthropic, sys; sys.exit(openai.__version__ != '$OPENAI_SDK_VERSION' or anthropic.__version__ != '$ANTHROPIC_SDK_VERSION')" 2>/dev/null; then
    return 0
  fi
  say "installing openai==$OPENAI_SDK_VERSION and anthropic==$ANTHROPIC_SDK_VERSION into .venv"
  "$python" -m pip install --quiet --disable-pip-version-check \
    "openai==$OPENAI_SDK_VERSION" "anthropic==$ANTHROPIC_SDK_VERSION" >&2 || return 1
  "$python" -c "import openai, anthropic" 2>/dev/null
}
if setup_venv; then
  sdk_status="openai $OPENAI_SDK_VERSION, anthropic $ANTHROPIC_SDK_VERSION"
else
  loud "could not set up .venv with openai==$OPENAI_SDK_VERSION and anthropic==$ANTHROPIC_SDK_VERSION (offline? python3-venv missing?)" \
    "the OpenAI SDK tests will SKIP (or FAIL when CI=true)"
fi

# --- 2. the OIDC provider ----------------------------------------------------------------------
idp_status="oidc-provider"
if ! scripts/idp.sh install; then
  idp_status="missing"
  loud "could not install the OIDC provider (scripts/idp.sh install: node/npm missing? offline?)" \
    "the OIDC token tests will SKIP (or FAIL when CI=true)"
fi

# --- 3. the real small model --------------------------------------------------------------------
started_slm=no
stop_slm() {
  if [ "$started_slm" = yes ]; then scripts/real-slm.sh stop "$SLM_PORT" || true; fi
}
trap stop_slm EXIT
if [ -z "${PORTCULLIS_REAL_SLM_URL:-}" ]; then
  if url="$(scripts/real-slm.sh status "$SLM_PORT" 2>/dev/null)"; then
    export PORTCULLIS_REAL_SLM_URL="$url"
  elif [ "${CI:-}" = true ]; then
    say "CI=true: starting the real small model"
    if url="$(scripts/real-slm.sh start "$SLM_PORT")"; then
      started_slm=yes
      export PORTCULLIS_REAL_SLM_URL="$url"
    else
      loud "could not start the real small model; its tests will FAIL (CI=true)"
    fi
  else
    loud "no real small model (start one with: scripts/real-slm.sh start)" \
      "the real-model tests will SKIP"
  fi
fi
slm_status="${PORTCULLIS_REAL_SLM_URL:-none}"

# --- 4. the tests -------------------------------------------------------------------------------
log="$(mktemp "${TMPDIR:-/tmp}/portcullis-test.XXXXXX")"
started_at=$SECONDS
say "cargo test --workspace --locked --no-fail-fast $*"
set +e
cargo test --workspace --locked --no-fail-fast "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
elapsed=$((SECONDS - started_at))

# Totals over every "test result:" line (unit, integration and doc tests).
read -r passed failed ignored suites < <(awk '
  /^test result: / {
    for (i = 1; i <= NF; i++) {
      if ($(i + 1) ~ /^passed;?$/) p += $i
      if ($(i + 1) ~ /^failed;?$/) f += $i
      if ($(i + 1) ~ /^ignored;?$/) g += $i
    }
    s++
  }
  END { printf "%d %d %d %d\n", p, f, g, s }' "$log")
skipped_services="$(grep -c 'SKIPPED (missing service)' "$log" || true)"
rm -f "$log"

echo
echo "== scripts/test.sh: cargo exit $status after ${elapsed}s; $suites test binaries; SDK: $sdk_status; OIDC provider: $idp_status; real SLM: $slm_status; skipped for missing services: $skipped_services"
if [ "$suites" -gt 0 ]; then
  echo "summary: $passed passed, $failed failed, $ignored skipped"
fi
exit "$status"
