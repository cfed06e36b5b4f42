#!/usr/bin/env bash
# Deploy docker-compose.yml on Docker Swarm as the stack "vkv" (services vkv_kv1..vkv_kv5), on a
# one-node swarm made here if this engine is in none; wait until every replica answers GET /health
# on its published port (7000-7004). Pulls no image: the stack runs vkv:local, built first by
# scripts/docker-build.sh — on a multi-node swarm, push it to a registry the nodes can reach and
# set the image there. Take it down with scripts/swarm-down.sh.
#   VKV_UP_TIMEOUT=120  seconds to wait for the replicas to become healthy
#
# Swarm reads the same file as docker compose, plus deploy/swarm/docker-compose.swarm.yml: the
# few lines Swarm needs (no virtual IPs, host-mode ports; why is in that file). The ports are
# published on every interface (Swarm cannot bind one address): keep 7000-7004 firewalled.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/common.sh
. scripts/common.sh
require_docker
mkdir -p "$(dirname "$MARKER")"

state=$(docker info --format '{{.Swarm.LocalNodeState}}')
if [ "$state" = inactive ]; then
  echo "swarm-up: this engine is in no swarm; initialising a one-node swarm"
  created=""
  docker network inspect docker_gwbridge >/dev/null 2>&1 || created=docker_gwbridge
  docker swarm init >/dev/null
  echo "$created" >"$MARKER"
elif [ "$state" != active ]; then
  echo "swarm-up: this engine's swarm state is '$state'; expected active or inactive" >&2
  exit 1
elif [ "$(docker info --format '{{.Swarm.ControlAvailable}}')" != true ]; then
  echo "swarm-up: this node is a swarm worker; run this on a manager" >&2
  exit 1
fi

scripts/docker-build.sh
# The service names (kv1..kv5) resolve inside the stack's overlay network as in compose, so the
# command lines and the --host each replica announces are the compose file's.
docker stack deploy --compose-file docker-compose.yml \
  --compose-file deploy/swarm/docker-compose.swarm.yml "$STACK"
if ! wait_compose_healthy "${VKV_UP_TIMEOUT:-120}" "docker service logs ${STACK}_kv1 (…kv5)"; then
  docker stack ps --no-trunc "$STACK" >&2 || true
  exit 1
fi
echo "swarm-up: stack $STACK: kv1..kv5 healthy on ports 7000-7004"
