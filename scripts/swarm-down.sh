#!/usr/bin/env bash
# Remove the stack scripts/swarm-up.sh deployed: its services, containers, network and data
# volumes; then, if swarm-up.sh initialised this engine's swarm, leave it (--force: the only
# manager) and remove the docker_gwbridge network its `swarm init` created. The vkv:local image
# stays. Safe to run twice or after a failed swarm-up.sh.
#   VKV_DOWN_TIMEOUT=60  seconds to wait for the stack's containers and network to go
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/common.sh
. scripts/common.sh
require_docker
label="label=com.docker.stack.namespace=$STACK"

if [ "$(docker info --format '{{.Swarm.LocalNodeState}}')" = active ]; then
  docker stack rm "$STACK" >/dev/null 2>&1 || true
fi
# `stack rm` returns before the containers stop; their volumes can go only after them.
deadline=$(( SECONDS + ${VKV_DOWN_TIMEOUT:-60} ))
while [ -n "$(docker ps -aq --filter "$label")" ] || [ -n "$(docker network ls -q --filter "$label")" ]; do
  if (( SECONDS >= deadline )); then
    echo "swarm-down: the stack's containers or network are still there after ${VKV_DOWN_TIMEOUT:-60} s:" >&2
    docker ps -a --filter "$label" >&2
    docker network ls --filter "$label" >&2
    exit 1
  fi
  sleep 1
done
volumes=$(docker volume ls -q --filter "$label")
if [ -n "$volumes" ]; then
  # shellcheck disable=SC2086 # one volume name per word
  docker volume rm $volumes >/dev/null
fi

if [ -f "$MARKER" ]; then
  docker swarm leave --force >/dev/null
  if grep -qx docker_gwbridge "$MARKER"; then
    docker network rm docker_gwbridge >/dev/null
  fi
  rm -f "$MARKER"
  echo "swarm-down: stack $STACK removed; left the swarm swarm-up.sh had initialised"
else
  echo "swarm-down: stack $STACK removed (volumes too)"
fi
