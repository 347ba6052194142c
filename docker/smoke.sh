#!/usr/bin/env bash
# End-to-end smoke test of the container deployment: builds the CPU image, starts
# docker/compose.yaml (PostgreSQL, the S3 stand-in, migrations, the API, one worker) with
# podman-compose, uploads examples/A and examples/B through the API, scores them as a job, and
# checks that the job's FID equals `gapmeter score examples/A examples/B` (the CLI, same image).
#
#   docker/smoke.sh              # as root, on Debian bookworm; prints each phase's time
#   SMOKE_KEEP=1 docker/smoke.sh # leave the containers running afterwards
#
# It sets up what it needs: Debian's podman, runc and debootstrap, runc as the OCI runtime
# (/etc/containers/containers.conf, written only when absent), podman-compose from PyPI, and
# local stand-ins for the base images (docker/smoke/bases.sh) where no container registry is
# reachable. Models: ~/.cache/gapmeter/models (`make models`), or $GAPMETER_MODELS.
# The first run builds the Rust code in the container: ~30 min on 2 cores; later runs reuse the
# cargo cache mounts.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
CACHE_DIR="${GAPMETER_CACHE:-$HOME/.cache/gapmeter}"
VENV="$CACHE_DIR/venv-smoke"
MODELS="${GAPMETER_MODELS:-$CACHE_DIR/models}"
PORT="${SMOKE_PORT:-18080}"
PROJECT=gapmeter-smoke
IMAGE=localhost/gapmeter:smoke
S3_IMAGE=localhost/gapmeter-s3-dev:smoke
PG_IMAGE=localhost/gapmeter-smoke-postgres:16

declare -a PHASES=()
phase_start=0 phase_name=""
phase() { # name: closes the running phase, opens the next
  local now=$SECONDS
  if [[ -n "$phase_name" ]]; then
    PHASES+=("$(printf '%-34s %5ds' "$phase_name" $((now - phase_start)))")
    echo "-- $phase_name: $((now - phase_start)) s"
  fi
  phase_name="$1" phase_start=$now
  [[ -n "$phase_name" ]] && echo "== $phase_name ($(date +%H:%M:%S))"
  return 0
}
summary() {
  phase ""
  echo "== phase timings"
  printf '  %s\n' "${PHASES[@]}"
  echo "  total                              $((SECONDS))s"
}

if [[ $EUID -ne 0 ]]; then
  echo "smoke.sh: run as root (rootful podman, apt-get)" >&2
  exit 1
fi
[[ -f "$MODELS/inception-v3-fid-untrained.toml" || -f "$MODELS/inception-v3-fid.toml" ]] ||
  { echo "smoke.sh: no FID extractor in $MODELS: run 'make models' first" >&2; exit 1; }

phase "prerequisites"
need=()
for pair in podman:podman runc:runc debootstrap:debootstrap curl:curl; do
  command -v "${pair%%:*}" >/dev/null || need+=("${pair#*:}")
done
if ((${#need[@]})); then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
# crun (podman's default here) fails on hosts with hybrid cgroups or a denied setrlimit; runc with
# cgroupfs and no default ulimits works. An existing file is the administrator's: left alone.
if [[ ! -f /etc/containers/containers.conf ]]; then
  cat > /etc/containers/containers.conf <<'EOF'
# Written by gapmeter's docker/smoke.sh: crun fails on this host (hybrid cgroups, setrlimit denied);
# runc with cgroupfs and no default ulimits works.
[containers]
default_ulimits = []

[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
EOF
fi
if [[ ! -f "$VENV/.complete" ]]; then
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "podman-compose==1.6.0"
  touch "$VENV/.complete"
fi
# Without systemd, podman cannot schedule health checks and says so at every container start;
# wait_healthy below runs them instead, so that line is only noise.
compose() {
  "$VENV/bin/podman-compose" -p "$PROJECT" -f docker/compose.yaml "$@" \
    2> >(grep -v 'unable to get systemd connection' >&2)
}
export GAPMETER_IMAGE="$IMAGE" GAPMETER_S3_IMAGE="$S3_IMAGE" POSTGRES_IMAGE="$PG_IMAGE"
export GAPMETER_MODELS="$MODELS" GAPMETER_PORT="$PORT" GAPMETER_LOG=info
GAPMETER_ADMIN_KEY="$(head -c 24 /dev/urandom | base64 | tr -d '/+=')"
export GAPMETER_ADMIN_KEY

cleanup() {
  local rc=$?
  if [[ "${SMOKE_KEEP:-0}" == 1 ]]; then
    echo "SMOKE_KEEP=1: containers left running; stop with: $VENV/bin/podman-compose -p $PROJECT -f docker/compose.yaml down -v"
  else
    compose down -v >/dev/null 2>&1 || true
  fi
  [[ -n "${ctx:-}" ]] && rm -rf "$ctx"
  summary
  exit "$rc"
}
trap cleanup EXIT

phase "base images (stand-ins)"
docker/smoke/bases.sh

phase "build gapmeter image"
# The build reads a snapshot of the working tree (tracked and untracked, not ignored), so edits
# made while it runs cannot mix two states into one binary.
# SMOKE_REF=<commit> builds that commit instead.
ctx="$(mktemp -d)"
if [[ -n "${SMOKE_REF:-}" ]]; then
  git archive --format=tar "$SMOKE_REF" | tar -C "$ctx" -xf -
  revision="$(git rev-parse --short "$SMOKE_REF")"
else
  git ls-files -z --cached --others --exclude-standard |
    tar --null --ignore-failed-read -T - -cf - 2>/dev/null | tar -C "$ctx" -xf -
  revision="$(git rev-parse --short HEAD)$(git diff --quiet HEAD || echo -dirty)"
fi
echo "building $revision"
nice -n 10 podman build --format docker --network host --ignorefile "$ctx/docker/Dockerfile.dockerignore" \
  --build-arg REVISION="$revision" \
  --build-arg CREATED="$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
  -f "$ctx/docker/Dockerfile" -t "$IMAGE" "$ctx"
podman image inspect "$IMAGE" --format 'image size: {{.Size}} bytes'
podman run --rm --no-healthcheck --entrypoint bash "$IMAGE" -c 'ls -la /opt/gapmeter/lib; ldd /usr/local/bin/gapmeter'

phase "build s3 image"
nice -n 10 podman build --format docker --network host -q -f docker/Dockerfile.s3 -t "$S3_IMAGE" docker >/dev/null

phase "compose: postgres and s3"
compose down -v >/dev/null 2>&1 || true
compose up -d --no-deps postgres s3
container() { # service -> its (first) container's name
  podman ps -a --filter "label=com.docker.compose.project=$PROJECT" \
    --filter "label=com.docker.compose.service=$1" --format '{{.Names}}' | head -n 1
}
# podman 4.3 runs health checks only on a systemd timer, and podman-compose skips `service_healthy`
# below podman 4.6: run the checks here instead.
wait_healthy() { # service timeout_s
  local c deadline=$((SECONDS + $2))
  c="$(container "$1")"
  until podman healthcheck run "$c" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || { echo "$1 not healthy after $2 s" >&2; podman logs "$c" | tail -20 >&2; return 1; }
    sleep 1
  done
  echo "$1 healthy"
}
wait_healthy postgres 90
wait_healthy s3 90

phase "compose: s3-init and migrate"
run_once() { # service: starts a one-shot service and requires exit status 0
  local c rc
  compose up -d --no-deps "$1" >/dev/null
  c="$(container "$1")"
  rc="$(podman wait "$c")"
  podman logs "$c" 2>&1 | tail -5
  [[ "$rc" == 0 ]] || { echo "$1 exited $rc" >&2; return 1; }
}
run_once s3-init
run_once migrate

phase "compose: api and worker"
compose up -d --no-deps api worker
deadline=$((SECONDS + 120))
until curl -fsS "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1; do
  ((SECONDS < deadline)) || { echo "API not ready" >&2; podman logs "$(container api)" | tail -30 >&2; exit 1; }
  sleep 1
done
curl -fsS "http://127.0.0.1:$PORT/readyz"; echo
wait_healthy api 60
# The worker loads its models before it takes jobs; its health check is verified at the end.
deadline=$((SECONDS + 180))
until podman logs "$(container worker)" 2>&1 | grep -q '^worker .* started'; do
  ((SECONDS < deadline)) || { echo "worker did not start" >&2; podman logs "$(container worker)" | tail -30 >&2; exit 1; }
  sleep 1
done
podman logs "$(container worker)" 2>&1 | grep -E '^(models|worker) '

phase "team, key, uploads"
team=$(curl -fsS -X POST "http://127.0.0.1:$PORT/v1/teams" -H "Authorization: Bearer $GAPMETER_ADMIN_KEY" \
  -H 'Content-Type: application/json' -d '{"name": "smoke"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
key=$(curl -fsS -X POST "http://127.0.0.1:$PORT/v1/teams/$team/keys" -H "Authorization: Bearer $GAPMETER_ADMIN_KEY" \
  -H 'Content-Type: application/json' -d '{"name": "smoke", "scopes": ["read", "write"]}' |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
# The client is the image's own binary, on the host's network, reading examples/ read-only.
client() {
  podman run --rm --no-healthcheck --network host -e GAPMETER_URL="http://127.0.0.1:$PORT" -e GAPMETER_KEY="$key" \
    -v "$root/examples:/examples:ro" "$IMAGE" client "$@"
}
client upload smoke-a /examples/A
client upload smoke-b /examples/B

phase "score through the API (worker)"
client score smoke-a smoke-b --metrics fid --no-progress --format json > "$CACHE_DIR/smoke-api.json"

phase "score with the CLI"
podman run --rm --no-healthcheck -v "$root/examples:/examples:ro" -v "$MODELS:/models:ro" "$IMAGE" \
  score /examples/A /examples/B --metrics fid --format json > "$CACHE_DIR/smoke-cli.json"

# SMOKE_HOST_CLI=target/debug/gapmeter: also the host's own build (through scripts/with-libtorch.sh).
if [[ -n "${SMOKE_HOST_CLI:-}" ]]; then
  GAPMETER_MODELS_DIR="$MODELS" scripts/with-libtorch.sh "$SMOKE_HOST_CLI" \
    score examples/A examples/B --metrics fid --format json > "$CACHE_DIR/smoke-host-cli.json"
fi

phase "checks"
python3 - "$CACHE_DIR/smoke-api.json" "$CACHE_DIR/smoke-cli.json" "${SMOKE_HOST_CLI:+$CACHE_DIR/smoke-host-cli.json}" <<'PY'
import json, sys
runs = {"API (job on the worker)": sys.argv[1], "CLI in the image": sys.argv[2]}
if len(sys.argv) > 3 and sys.argv[3]:
    runs["CLI on the host"] = sys.argv[3]
fids = {k: json.load(open(p))["metrics"]["fid"]["value"] for k, p in runs.items()}
for k, v in fids.items():
    print(f"FID, {k + ':':<26} {v!r}")
ref = fids["API (job on the worker)"]
worst = max(abs(v - ref) / max(abs(ref), 1e-300) for v in fids.values())
print(f"largest relative difference: {worst:.3e}")
if worst > 1e-9:
    sys.exit("FID differs between the API and the CLI")
PY
wait_healthy worker 60
metrics=$(curl -fsS "http://127.0.0.1:$PORT/metrics")
grep -E '^gapmeter_jobs\{status="(queued|succeeded)"\}' <<<"$metrics"
worker_metrics=$(podman exec "$(container worker)" bash -c \
  'exec 3<>/dev/tcp/127.0.0.1/9091; printf "GET /metrics HTTP/1.0\r\n\r\n" >&3; cat <&3')
grep -c '^gapmeter_' <<<"$worker_metrics" | sed 's/^/worker \/metrics series: /'
echo "smoke: OK"
