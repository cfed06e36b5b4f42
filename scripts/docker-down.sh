#!/usr/bin/env bash
# Stop and remove the compose deployment started by scripts/docker-up.sh: the five containers,
# their network and their data volumes (-v). The vkv:local image stays, for a quick next start;
# add --rmi all to remove it too:  scripts/docker-down.sh --rmi all
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/common.sh
. scripts/common.sh
compose down -v "$@"
