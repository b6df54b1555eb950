#!/bin/sh
# Prints envoy.yaml filled from LISTEN, AUTHZ and UPSTREAM (host:port each; an IPv6 host in
# brackets, [::1]:8082). Envoy names a socket's host and port apart: each address is split here.
#   LISTEN=0.0.0.0:8080 AUTHZ=127.0.0.1:8082 UPSTREAM=127.0.0.1:8000 ./render.sh > envoy.yaml
set -eu

split() {
  name=$1
  address=$2
  port=${address##*:}
  host=${address%:*}
  host=${host#[}
  host=${host%]}
  case $port in
    '' | *[!0-9]*) echo "render.sh: $name must be host:port, not '$address'" >&2; exit 2 ;;
  esac
  export "${name}_HOST=$host" "${name}_PORT=$port"
}

split LISTEN "${LISTEN:?set LISTEN=host:port}"
split AUTHZ "${AUTHZ:?set AUTHZ=host:port}"
split UPSTREAM "${UPSTREAM:?set UPSTREAM=host:port}"
envsubst '$LISTEN_HOST $LISTEN_PORT $AUTHZ_HOST $AUTHZ_PORT $UPSTREAM_HOST $UPSTREAM_PORT' \
  < "$(dirname "$0")/envoy.yaml"
