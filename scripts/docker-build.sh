#!/usr/bin/env bash
# Build the image vkv:local that docker-compose.yml runs, with no image pulls: first the static
# release binaries, then the FROM-scratch image around them (see Dockerfile). Run by
# scripts/docker-up.sh and scripts/swarm-up.sh; by itself when only the image is wanted.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/common.sh
. scripts/common.sh
require_docker

# A static glibc binary (the toolchain has no musl target). --target keeps RUSTFLAGS off build
# scripts and proc macros. --target-dir target whatever CARGO_TARGET_DIR says: the Dockerfile
# COPYs from there, inside the build context (.dockerignore sends only the two binaries).
# Debug info is stripped to keep the image small (symbols stay).
echo "docker-build: building static release binaries (the first build takes a few minutes)"
RUSTFLAGS="-C target-feature=+crt-static" CARGO_PROFILE_RELEASE_STRIP=debuginfo \
  cargo build --release --locked --target x86_64-unknown-linux-gnu --target-dir target \
  --bin vkv-server --bin vkv
docker build --quiet --tag vkv:local . >/dev/null
echo "docker-build: image vkv:local built"
