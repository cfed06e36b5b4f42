#!/usr/bin/env bash
# Build the image (scripts/docker-build.sh) and start the five replicas of docker-compose.yml
# (kv1..kv5 on 127.0.0.1:7000-7004); wait until every one answers GET /health.
# Pulls no image. Take it down with scripts/docker-down.sh.
#   VKV_UP_TIMEOUT=120  seconds to wait for the replicas to become healthy
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/common.sh
. scripts/common.sh
require_docker
compose version >/dev/null

scripts/docker-build.sh
compose up -d
if ! wait_compose_healthy "${VKV_UP_TIMEOUT:-120}" "docker compose logs"; then
  compose ps >&2 || true
  exit 1
fi
echo "docker-up: kv1..kv5 healthy on 127.0.0.1:7000-7004"
