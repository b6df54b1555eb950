#!/usr/bin/env bash
# fuzz.sh — coverage-guided fuzzing of the parsers of untrusted bytes (AFL++ via cargo-afl,
# stable toolchain). The targets are the binaries of fuzz/; docs/fuzzing.md explains them.
#
#   scripts/fuzz.sh smoke [SECONDS]        every target for SECONDS (default 10) each, fresh
#                                          output; for CI
#   scripts/fuzz.sh run TARGET SECONDS     one target, longer; resumes its previous run
#   scripts/fuzz.sh repro TARGET FILE      runs one input through a target (no fuzzing) and
#                                          shows the panic
#   scripts/fuzz.sh tmin TARGET FILE OUT   minimises a crashing input into OUT
#   scripts/fuzz.sh list                   the targets
#
# Installs cargo-afl (pinned, ~45 s) when missing, and builds into a target directory outside
# the clone: PORTCULLIS_FUZZ_TARGET_DIR, else "$CARGO_TARGET_DIR-afl", else
# /var/tmp/portcullis-fuzz-target (PORTCULLIS_FUZZ_NO_BUILD=1 uses what is built there as it
# is). Fuzzer output goes to PORTCULLIS_FUZZ_OUT (default
# /var/tmp/portcullis-fuzz/<target>; smoke runs use a fresh temporary directory).
# Exits non-zero when a target crashed (a panic or a broken invariant), printing the inputs.
set -euo pipefail

# cargo-afl and the `afl` crate in fuzz/Cargo.lock must be the same version.
readonly CARGO_AFL_VERSION="0.18.2"
readonly TARGETS=(key_format credential_header request_body sse_scan chunked_decode response_head upstream_path config)

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

if [ -n "${PORTCULLIS_FUZZ_TARGET_DIR:-}" ]; then
  target_dir="$PORTCULLIS_FUZZ_TARGET_DIR"
elif [ -n "${CARGO_TARGET_DIR:-}" ]; then
  # Instrumented builds must not share (and keep invalidating) the ordinary target directory.
  target_dir="$CARGO_TARGET_DIR-afl"
else
  target_dir=/var/tmp/portcullis-fuzz-target
fi
readonly BIN_DIR="$target_dir/release"

say() { printf '[fuzz.sh] %s\n' "$*" >&2; }
die() {
  say "$*"
  exit 2
}

# The dictionary that helps a target, if any (fuzz/dict/).
dictionary() {
  case "$1" in
    request_body) echo fuzz/dict/json.dict ;;
    sse_scan) echo fuzz/dict/sse.dict ;;
    credential_header | chunked_decode | response_head | upstream_path) echo fuzz/dict/http.dict ;;
    config) echo fuzz/dict/toml.dict ;;
    *) echo "" ;;
  esac
}

known_target() {
  local target
  for target in "${TARGETS[@]}"; do [ "$target" = "$1" ] && return 0; done
  die "unknown target '$1' (scripts/fuzz.sh list)"
}

install_cargo_afl() {
  if cargo afl --version 2>/dev/null | grep -q "cargo-afl $CARGO_AFL_VERSION"; then
    return
  fi
  say "installing cargo-afl $CARGO_AFL_VERSION (builds AFL++ for this rustc)"
  cargo install cargo-afl --locked --force --version "$CARGO_AFL_VERSION" >&2
}

build() {
  if [ "${PORTCULLIS_FUZZ_NO_BUILD:-}" = 1 ]; then
    [ -d "$BIN_DIR" ] || die "PORTCULLIS_FUZZ_NO_BUILD=1 but nothing is built in $BIN_DIR"
    return
  fi
  install_cargo_afl
  say "cargo afl build --release (CARGO_TARGET_DIR=$target_dir)"
  (cd fuzz && CARGO_TARGET_DIR="$target_dir" cargo afl build --release --locked >&2)
}

# Prints one line of what a finished run did, read from AFL's fuzzer_stats; returns 1 when it
# saved a crash.
report() {
  local target="$1" out="$2" stats="$2/default/fuzzer_stats"
  if [ ! -f "$stats" ]; then
    say "$target: no fuzzer_stats in $out (afl-fuzz did not start; see $out/afl.log)"
    return 1
  fi
  stat() { awk -F' *: *' -v key="$1" '$1 == key { print $2 }' "$stats"; }
  local crashes hangs
  crashes="$(find "$out/default/crashes" -type f ! -name README.txt 2>/dev/null | wc -l)"
  hangs="$(find "$out/default/hangs" -type f 2>/dev/null | wc -l)"
  printf '%-18s %12s execs in %5ss (%s/s)  corpus %5s  crashes %s  hangs %s\n' "$target" "$(stat execs_done)" \
    "$(stat run_time)" "$(stat execs_per_sec)" "$(stat corpus_count)" "$crashes" "$hangs"
  if [ "$crashes" -gt 0 ]; then
    say "$target CRASHED; inputs (reproduce with: scripts/fuzz.sh repro $target FILE):"
    find "$out/default/crashes" -type f ! -name README.txt | sed 's/^/    /' >&2
    return 1
  fi
  if [ "$hangs" -gt 0 ]; then
    say "$target: $hangs input(s) exceeded AFL's time limit (on a loaded machine these can be noise); see $out/default/hangs"
  fi
}

# fuzz TARGET SECONDS OUT [resume]
fuzz() {
  local target="$1" seconds="$2" out="$3" input="fuzz/corpus/$1" dict
  local args=(-V "$seconds" -o "$out")
  if [ "${4:-}" = resume ] && [ -f "$out/default/fuzzer_stats" ]; then
    args+=(-i -)
  else
    args+=(-i "$input")
  fi
  dict="$(dictionary "$target")"
  if [ -n "$dict" ]; then args+=(-x "$dict"); fi
  mkdir -p "$out"
  say "$target: fuzzing for ${seconds}s into $out"
  # AFL runs as root here; it must not wait for a CPU-frequency governor or a core-dump handler.
  AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_UI=1 AFL_NO_AFFINITY="${AFL_NO_AFFINITY:-1}" \
    cargo afl fuzz "${args[@]}" "$BIN_DIR/$target" >"$out/afl.log" 2>&1 || {
    say "$target: afl-fuzz failed; the end of $out/afl.log:"
    tail -n 20 "$out/afl.log" >&2
    return 1
  }
}

command="${1:-}"
case "$command" in
  list)
    printf '%s\n' "${TARGETS[@]}"
    ;;
  smoke)
    seconds="${2:-10}"
    build
    work="$(mktemp -d "${TMPDIR:-/tmp}/portcullis-fuzz-smoke.XXXXXX")"
    failed=()
    summary=()
    for target in "${TARGETS[@]}"; do
      if ! fuzz "$target" "$seconds" "$work/$target"; then
        failed+=("$target")
        continue
      fi
      if ! line="$(report "$target" "$work/$target")"; then failed+=("$target"); fi
      summary+=("$line")
    done
    printf '\n== fuzz smoke: %ss per target\n' "$seconds"
    printf '%s\n' "${summary[@]}"
    if [ "${#failed[@]}" -gt 0 ]; then
      say "FAILED: ${failed[*]} (output kept in $work)"
      exit 1
    fi
    rm -rf "$work"
    ;;
  run)
    [ $# -eq 3 ] || die "usage: scripts/fuzz.sh run TARGET SECONDS"
    known_target "$2"
    build
    out="${PORTCULLIS_FUZZ_OUT:-/var/tmp/portcullis-fuzz}/$2"
    fuzz "$2" "$3" "$out" resume
    report "$2" "$out"
    ;;
  repro)
    [ $# -eq 3 ] || die "usage: scripts/fuzz.sh repro TARGET FILE"
    known_target "$2"
    [ -x "$BIN_DIR/$2" ] || build
    # Outside afl-fuzz the binary reads one input from standard input and panics visibly.
    RUST_BACKTRACE="${RUST_BACKTRACE:-1}" "$BIN_DIR/$2" <"$3"
    ;;
  tmin)
    [ $# -eq 4 ] || die "usage: scripts/fuzz.sh tmin TARGET FILE OUT"
    known_target "$2"
    [ -x "$BIN_DIR/$2" ] || build
    AFL_SKIP_CPUFREQ=1 cargo afl tmin -i "$3" -o "$4" -- "$BIN_DIR/$2"
    ;;
  *)
    sed -n '2,17p' "${BASH_SOURCE[0]}" >&2
    exit 2
    ;;
esac
