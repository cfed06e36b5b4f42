#!/usr/bin/env bash
# Start or stop a 5-replica vkv cluster on 127.0.0.1:7000-7004 by hand.
#   scripts/cluster.sh start   build (release) and start; logs and data under vkv-data/
#                              (binaries from cargo's target dir: CARGO_TARGET_DIR is honoured)
#   scripts/cluster.sh stop    SIGTERM every replica this script started
#   scripts/cluster.sh stop 5  stop replica 5 only;  scripts/cluster.sh start 5  restart it
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/common.sh
. scripts/common.sh
ROOT=vkv-data/cluster
PORTS=(7000 7001 7002 7003 7004)
mkdir -p "$ROOT"
# The cluster's shared secret for peer authentication, made once per cluster dir.
if [ ! -f "$ROOT/cluster.key" ]; then
  head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$ROOT/cluster.key"
fi

start_one() {
  local id=$1 port=${PORTS[$(( $1 - 1 ))]} peers=() hosts=()
  for p in "${PORTS[@]}"; do
    [ "$p" = "$port" ] && continue
    peers+=("$p"); hosts+=(127.0.0.1)
  done
  if [ -f "$ROOT/replica-$id.pid" ] && kill -0 "$(cat "$ROOT/replica-$id.pid")" 2>/dev/null; then
    echo "replica $id already running (pid $(cat "$ROOT/replica-$id.pid"))"; return
  fi
  "$BIN/vkv-server" --host 127.0.0.1 --port "$port" -N ${#PORTS[@]} \
    --hosts "$(IFS=,; echo "${hosts[*]}")" --ports "$(IFS=,; echo "${peers[*]}")" \
    --data-dir "$ROOT/replica-$id" --cluster-key-file "$ROOT/cluster.key" >>"$ROOT/replica-$id.log" 2>&1 &
  echo $! >"$ROOT/replica-$id.pid"
}

# Reports replica $1 as started only once it answers /health; if it exits first (a flag, a port in
# use, a damaged store), says so with its log's tail. A replica on a new data dir first recovers
# from its peers (about a second), so every replica is started before any is waited for.
wait_one() {
  local id=$1 port=${PORTS[$(( $1 - 1 ))]} pid rc=0
  pid=$(cat "$ROOT/replica-$id.pid")
  wait_healthy "$(( SECONDS + 30 ))" "$port" "$pid" || rc=$?
  case $rc in
    0) echo "replica $id on 127.0.0.1:$port ready (pid $pid, log $ROOT/replica-$id.log)"; return 0 ;;
    2) echo "replica $id exited at startup; the end of $ROOT/replica-$id.log:" >&2 ;;
    *) echo "replica $id (pid $pid) is not healthy after 30 s; the end of $ROOT/replica-$id.log:" >&2 ;;
  esac
  tail -n 15 "$ROOT/replica-$id.log" >&2
  return 1
}

# SIGTERM, then wait (at most 15 s: the replica's own shutdown is bounded to about 10) until the
# process is gone, so a `start` right after finds the port free.
stop_one() {
  local f="$ROOT/replica-$1.pid" pid
  if [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null; then
    pid=$(cat "$f")
    kill -TERM "$pid"
    for _ in $(seq 1 150); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      echo "replica $1 (pid $pid) is still shutting down after 15 s (SIGTERM sent)" >&2
      return 1
    fi
    echo "replica $1 stopped (SIGTERM)"
  fi
  rm -f "$f"
}

if [ -n "${2:-}" ] && ! [[ "$2" =~ ^[1-5]$ ]]; then
  echo "usage: $0 start|stop [replica-id 1-5]" >&2; exit 2
fi
case "${1:-}" in
  start)
    cargo build --release --quiet --bin vkv-server --bin vkv
    BIN="$(target_dir)/release"
    if [ -n "${2:-}" ]; then ids=("$2"); else ids=(1 2 3 4 5); fi
    for i in "${ids[@]}"; do start_one "$i"; done
    failed=0
    for i in "${ids[@]}"; do wait_one "$i" || failed=1; done
    [ "$failed" = 0 ] || exit 1
    echo "ready; the CLI is $BIN/vkv" ;;
  stop)
    if [ -n "${2:-}" ]; then stop_one "$2"; else for i in 1 2 3 4 5; do stop_one "$i"; done; fi ;;
  *) echo "usage: $0 start|stop [replica-id 1-5]" >&2; exit 2 ;;
esac
