#!/usr/bin/env bash
# Container health check without curl in the image: GET /healthz over bash's /dev/tcp.
# Port: the first argument, else $GAPMETER_HEALTHCHECK_PORT, else 8080 (the API). Workers answer
# /healthz on their metrics port (9091 in compose.yaml and the Kubernetes manifests).
set -euo pipefail
port="${1:-${GAPMETER_HEALTHCHECK_PORT:-8080}}"
exec 3<>"/dev/tcp/127.0.0.1/$port"
printf 'GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n' >&3
IFS= read -r -t 4 status <&3
[[ "$status" == HTTP/1.?" 200"* ]]
