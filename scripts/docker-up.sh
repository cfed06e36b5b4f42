#!/usr/bin/env bash
# Build the static vkv binaries, build the FROM-scratch image and start the five replicas of
# docker-compose.yml (kv1..kv5 on 127.0.0.1:7000-7004); wait until every one answers GET /health.
# Pulls no image. Take it down with scripts/docker-down.sh.
#   VKV_UP_TIMEOUT=120  seconds to wait for the replicas to become healthy
set -euo pipefail
cd "$(dirname "$0")/.."

if docker compose version >/dev/null 2>&1; then
  compose() { docker compose "$@"; }
elif command -v docker-compose >/dev/null 2>&1; then
  compose() { docker-compose "$@"; }
else
  echo "docker-up: neither 'docker compose' nor 'docker-compose' is installed" >&2; exit 1
fi
docker info >/dev/null 2>&1 || { echo "docker-up: no docker daemon answers" >&2; exit 1; }

# A static glibc binary (the toolchain has no musl target). --target keeps RUSTFLAGS off build
# scripts and proc macros; the output lands where the Dockerfile COPYs it from, under target/
# whatever CARGO_TARGET_DIR says. Debug info is stripped to keep the image small (symbols stay).
echo "docker-up: building static release binaries (the first build takes a few minutes)"
RUSTFLAGS="-C target-feature=+crt-static" CARGO_PROFILE_RELEASE_STRIP=debuginfo \
  cargo build --release --locked --target x86_64-unknown-linux-gnu --target-dir target \
  --bin vkv-server --bin vkv

compose up --build -d

deadline=$(( SECONDS + ${VKV_UP_TIMEOUT:-120} ))
for port in 7000 7001 7002 7003 7004; do
  until curl -sf --max-time 2 "http://127.0.0.1:$port/health" >/dev/null; do
    if (( SECONDS >= deadline )); then
      echo "docker-up: the replica on 127.0.0.1:$port is not healthy; see: docker compose logs" >&2
      compose ps >&2 || true
      exit 1
    fi
    sleep 0.5
  done
done
echo "docker-up: kv1..kv5 healthy on 127.0.0.1:7000-7004"
