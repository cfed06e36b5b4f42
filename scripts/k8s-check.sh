#!/usr/bin/env bash
# Validates deploy/k8s/vkv.yaml (or the manifest given as $1) with `kubectl apply --dry-run=client`, offline: no cluster here.
#
# Client-side dry-run still asks an API server two things: discovery (which kinds exist, to map
# each document to a resource) and a GET of each object (to decide create or patch). So this
# script starts a stand-in on a loopback port that answers discovery for the kinds the manifest
# uses (Service, StatefulSet, PodDisruptionBudget) and 404 to everything else ("not there yet:
# create"), with a throwaway kubeconfig pointing at it. --validate=false because the stand-in has
# no OpenAPI schema to validate against; what is checked: every document parses, maps to a known
# kind and goes through kubectl's apply path, and the fields the deployment relies on (below).
# Needs kubectl, python3 and jq.
set -euo pipefail
cd "$(dirname "$0")/.."
MANIFEST=${1:-deploy/k8s/vkv.yaml}
for tool in kubectl python3 jq; do
  command -v "$tool" >/dev/null || { echo "k8s-check: $tool is not installed" >&2; exit 2; }
done
work=$(mktemp -d)
stub_pid=""
cleanup() {
  if [ -n "$stub_pid" ]; then kill "$stub_pid" 2>/dev/null || true; wait "$stub_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

cat >"$work/stub.py" <<'PY'
import http.server, json, sys
GROUPS = {"apps/v1": [("statefulsets", "StatefulSet")], "policy/v1": [("poddisruptionbudgets", "PodDisruptionBudget")]}
CORE = [("services", "Service"), ("secrets", "Secret")]
def resources(gv, kinds):
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": [
        {"name": n, "singularName": k.lower(), "namespaced": True, "kind": k,
         "verbs": ["create", "delete", "get", "list", "patch", "update"]} for n, k in kinds]}
ROUTES = {
    "/api": {"kind": "APIVersions", "versions": ["v1"],
             "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]},
    "/apis": {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
        {"name": gv.split("/")[0], "versions": [{"groupVersion": gv, "version": "v1"}],
         "preferredVersion": {"groupVersion": gv, "version": "v1"}} for gv in GROUPS]},
    "/api/v1": resources("v1", CORE),
    **{"/apis/" + gv: resources(gv, kinds) for gv, kinds in GROUPS.items()},
}
class Stub(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ROUTES.get(self.path.split("?")[0])
        code = 200 if body else 404
        if body is None:
            body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", 0), Stub)
print(server.server_address[1], flush=True)
server.serve_forever()
PY
python3 "$work/stub.py" >"$work/port" &
stub_pid=$!
for _ in $(seq 1 50); do
  [ -s "$work/port" ] && break
  sleep 0.1
done
[ -s "$work/port" ] || { echo "k8s-check: the stand-in API server did not start" >&2; exit 1; }
cat >"$work/kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters: [{name: stub, cluster: {server: "http://127.0.0.1:$(cat "$work/port")"}}]
users: [{name: stub, user: {}}]
contexts: [{name: stub, context: {cluster: stub, user: stub, namespace: default}}]
current-context: stub
KC
kubectl=(kubectl --kubeconfig "$work/kubeconfig" --cache-dir "$work/cache" --request-timeout 10s)

"${kubectl[@]}" apply --dry-run=client --validate=false -f "$MANIFEST"
"${kubectl[@]}" apply --dry-run=client --validate=false -f "$MANIFEST" -o json >"$work/out.json"

# What the deployment relies on; each line prints what it checks, then the check.
fail=0
check() { # check DESCRIPTION JQ-EXPRESSION (true when the manifest is right)
  if [ "$(jq -r "$2" "$work/out.json")" = true ]; then
    echo "ok: $1"
  else
    echo "FAIL: $1" >&2; fail=1
  fi
}
sts='.items[] | select(.kind == "StatefulSet")'
svc='.items[] | select(.kind == "Service")'
c="$sts | .spec.template.spec.containers[0]"
check "a headless Service vkv that publishes not-ready pods" "[$svc | select(.metadata.name == \"vkv\") | .spec.clusterIP == \"None\" and .spec.publishNotReadyAddresses] == [true]"
check "a client Service vkv-client over ready pods only" "[$svc | select(.metadata.name == \"vkv-client\") | .spec.clusterIP != \"None\" and (.spec.publishNotReadyAddresses | not) and .spec.selector[\"app.kubernetes.io/name\"] == \"vkv\"] == [true]"
check "a StatefulSet kv of 5 under the Service, started in parallel" "[$sts | .metadata.name == \"kv\" and .spec.replicas == 5 and .spec.serviceName == \"vkv\" and .spec.podManagementPolicy == \"Parallel\"] == [true]"
check "the data dir on the volume claim template's volume" "[$sts | (.spec.volumeClaimTemplates[0].metadata.name) as \$v | .spec.template.spec.containers[0] | (.args | index(\"--data-dir\") as \$i | .[\$i + 1]) as \$d | .volumeMounts | any(.name == \$v and (.mountPath as \$m | \$d | startswith(\$m + \"/\")))] == [true]"
check "readiness on /readyz, liveness on /livez" "[$c | .readinessProbe.httpGet.path == \"/readyz\" and .livenessProbe.httpGet.path == \"/livez\"] == [true]"
check "the cluster key from a Secret" "[$c | .env | any(.name == \"VKV_CLUSTER_KEY\" and .valueFrom.secretKeyRef.name != null)] == [true]"
check "POD_NAME from the pod's name, used in --host" "[$c | (.env | any(.name == \"POD_NAME\" and .valueFrom.fieldRef.fieldPath == \"metadata.name\")) and (.args | index(\"--host\") as \$i | .[\$i + 1] == \"\$(POD_NAME).vkv\")] == [true]"
check "--members lists kv-0.vkv..kv-(replicas-1).vkv" "[$sts | .spec.replicas as \$n | .spec.serviceName as \$s | .spec.template.spec.containers[0].args | index(\"--members\") as \$i | .[\$i + 1] == ([range(\$n)] | map(\"kv-\\(.).\\(\$s):7000\") | join(\",\"))] == [true]"
[ "$fail" = 0 ] || { echo "k8s-check: $MANIFEST FAILED the checks above" >&2; exit 1; }
echo "k8s-check: $MANIFEST passes kubectl apply --dry-run=client (offline) and the checks above"
