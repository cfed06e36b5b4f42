#!/usr/bin/env bash
# End-to-end check of the Swarm deployment on this machine: scripts/swarm-up.sh (a one-node swarm
# if none, the stack from docker-compose.yml), then a write at replica 1 that must be readable at
# replica 5 and a `vkv status` that must list 5 members; scripts/swarm-down.sh always runs at the
# end (trap), also on failure or ctrl-c. Exit 0 = every check passed.
#   VKV_REPLICATION_TIMEOUT=30  seconds replica 5 gets to receive the write
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
trap 'scripts/swarm-down.sh || echo "swarm-test: swarm-down.sh failed; clean up by hand" >&2' EXIT
trap 'exit 130' INT TERM

scripts/swarm-up.sh
# The CLI from the static build swarm-up.sh just made (runs on any x86_64 Linux).
vkv=target/x86_64-unknown-linux-gnu/release/vkv
key="swarm-test-$$-$RANDOM"
value="written at replica 1 at $(date -u +%H:%M:%S)"

"$vkv" --server 127.0.0.1:7000 put "$key" "$value"
# Replication is asynchronous: poll replica 5 until the value is there, for a bounded time.
deadline=$(( SECONDS + ${VKV_REPLICATION_TIMEOUT:-30} ))
until got=$(curl -sf --max-time 2 "http://127.0.0.1:7004/kv/$key") && [[ "$got" == *"\"$value\""* ]]; do
  if (( SECONDS >= deadline )); then
    echo "swarm-test: FAIL: replica 5 does not hold $key after ${VKV_REPLICATION_TIMEOUT:-30} s (last answer: ${got:-none})" >&2
    exit 1
  fi
  sleep 0.5
done
echo "swarm-test: replica 5 holds the write made at replica 1: $got"

status=$("$vkv" --server 127.0.0.1:7004 --json status)
members=$(jq '.members | length' <<<"$status")
unreachable=$(jq '[.peers[] | select(.reachable | not)] | length' <<<"$status")
if [ "$members" != 5 ] || [ "$unreachable" != 0 ]; then
  echo "swarm-test: FAIL: vkv status shows $members members, $unreachable peers unreachable: $status" >&2
  exit 1
fi
"$vkv" --server 127.0.0.1:7004 status
echo "swarm-test: PASS: 5 members, all reachable (up and checks in $(( SECONDS - start )) s; teardown follows)"
