# shellcheck shell=bash
# Helpers the deployment scripts share (sourced, not run): finding cargo's target dir, running
# compose, waiting for replicas. Each script cds to the repository root before sourcing this.

# Cargo's target dir as cargo itself resolves it (CARGO_TARGET_DIR, .cargo/config, or ./target),
# so the scripts find the binaries wherever the build put them.
target_dir() {
  cargo metadata --format-version 1 --no-deps --offline \
    | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p'
}

# `docker compose` (the plugin) if present, else docker-compose v1; both read docker-compose.yml.
compose() {
  if docker compose version >/dev/null 2>&1; then
    docker compose "$@"
  elif command -v docker-compose >/dev/null 2>&1; then
    docker-compose "$@"
  else
    echo "neither 'docker compose' nor 'docker-compose' is installed" >&2
    return 1
  fi
}

require_docker() {
  docker info >/dev/null 2>&1 || { echo "$(basename "$0"): no docker daemon answers (docker info failed)" >&2; exit 1; }
}

# wait_healthy DEADLINE PORT [PID]: polls http://127.0.0.1:PORT/health until it answers 200.
# Returns 1 once SECONDS passes DEADLINE, 2 as soon as process PID (if given) has exited.
wait_healthy() {
  local deadline=$1 port=$2 pid=${3:-}
  # The process is checked first: if it died (its port was taken, say), whatever answers on the
  # port is not it.
  until { [ -z "$pid" ] || kill -0 "$pid" 2>/dev/null; } && curl -sf --max-time 2 "http://127.0.0.1:$port/health" >/dev/null; do
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
      return 2
    fi
    if (( SECONDS >= deadline )); then
      return 1
    fi
    sleep 0.5
  done
}

# The five replicas of docker-compose.yml, kv1..kv5, are published on these ports.
COMPOSE_PORTS=(7000 7001 7002 7003 7004)

# wait_compose_healthy TIMEOUT WHAT: waits for every published replica; WHAT names the command
# that shows the logs, for the error message.
wait_compose_healthy() {
  local deadline=$(( SECONDS + $1 )) port
  for port in "${COMPOSE_PORTS[@]}"; do
    if ! wait_healthy "$deadline" "$port"; then
      echo "$(basename "$0"): the replica published on port $port is not healthy after $1 s; see: $2" >&2
      return 1
    fi
  done
}

# The Docker Swarm stack of swarm-up.sh / swarm-down.sh / swarm-test.sh.
# shellcheck disable=SC2034 # used by the scripts that source this file
STACK=vkv
# Present while the swarm on this engine is one that swarm-up.sh initialised: swarm-down.sh
# then leaves it; a swarm that was there before is left alone. It lists what `swarm leave` does
# not remove: the docker_gwbridge network `swarm init` creates, unless it existed before.
# shellcheck disable=SC2034
MARKER=vkv-data/swarm/initialised-by-swarm-up
