#!/usr/bin/env bash
# Runs schemathesis (PyPI) against a live replica with its own /openapi.json: every described
# client route, every check but positive_data_acceptance (see the README: a write context is
# valid only as read from a GET of that key here — a schema-valid random clock that claims this
# replica's own counter is ahead is refused 400 by design). Starts one replica (N = 1) of the
# debug build on a free loopback port in a temp dir and stops it (by PID) on exit.
#   VKV_SCHEMATHESIS_EXAMPLES=200   examples per operation
set -euo pipefail
cd "$(dirname "$0")/.."
command -v schemathesis >/dev/null 2>&1 || { echo "schemathesis: not installed (pip install schemathesis)" >&2; exit 1; }
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
cargo build --locked --bin vkv-server
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
data=$(mktemp -d)
"$target_dir/debug/vkv-server" --port "$port" -N 1 --insecure --data-dir "$data/store" >"$data/replica.log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$data"' EXIT
for _ in $(seq 1 100); do
  curl -sf "http://127.0.0.1:$port/health" >/dev/null && break
  sleep 0.1
done
schemathesis run "http://127.0.0.1:$port/openapi.json" --checks all --exclude-checks positive_data_acceptance \
  --max-examples "${VKV_SCHEMATHESIS_EXAMPLES:-200}" --seed 42 --no-color
