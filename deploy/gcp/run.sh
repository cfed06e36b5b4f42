#!/usr/bin/env bash
# The vkv latency study on real Google Cloud VMs: one VM per region of report/regions.json, each
# running a vkv-server replica (systemd) and the report's measuring client. The measurement code
# is the simulated study's (`vkv-report measure`), and the report is rendered by the same code
# (`vkv-report render`). NOT RUN FROM THIS REPOSITORY'S MACHINES: they have no cloud access.
#
#   deploy/gcp/run.sh --project PROJECT [--quick] [--keep] [--dry-run] [--down-region REGION]
#
#   --project      the GCP project (billing enabled, Compute Engine API on; gcloud logged in)
#   --quick        fewer samples (the report's --quick)
#   --keep         leave the VMs and the firewall rule running (default: tear everything down)
#   --dry-run      print every gcloud/ssh command instead of running it (nothing is created)
#   --down-region  the region taken offline in the outage phase (default us-east1)
#   --out DIR      where the rendered report goes (default report-gcp/)
#
# Steps: build the static binaries → create the VMs → firewall rule admitting only the VMs'
# addresses on the vkv port → install vkv-server with a generated cluster key and a systemd unit →
# run each phase on every VM (scheduled phases start at the same wall-clock instant; GCP VMs keep
# time with Google's NTP) → fetch the results → render → delete the VMs and the rule.
set -euo pipefail
cd "$(dirname "$0")/../.."

PROJECT="" QUICK="" KEEP=0 DRY=0 DOWN="us-east1" OUT="report-gcp"
while [ $# -gt 0 ]; do
  case "$1" in
    --project) PROJECT=${2:?--project needs a value}; shift 2 ;;
    --quick) QUICK="--quick"; shift ;;
    --keep) KEEP=1; shift ;;
    --dry-run) DRY=1; shift ;;
    --down-region) DOWN=${2:?--down-region needs a value}; shift 2 ;;
    --out) OUT=${2:?--out needs a value}; shift 2 ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
[ -n "$PROJECT" ] || { echo "run.sh: --project is required (see --help)" >&2; exit 2; }

PORT=7000
MACHINE=e2-standard-2
PREFIX=vkv-study
REGIONS_FILE=report/regions.json
TARGET=x86_64-unknown-linux-gnu
BIN=target/$TARGET/release
WORK=$(mktemp -d)
RESULTS=$WORK/results
mkdir -p "$RESULTS"

# Runs a command, or prints it (shell-quoted) under --dry-run.
run() {
  if [ "$DRY" = 1 ]; then
    printf '+'; printf ' %q' "$@"; printf '\n'
  else
    "$@"
  fi
}

# The regions and their zones, from the one data file the simulation also reads.
mapfile -t REGIONS < <(python3 -c 'import json,sys; [print(r["name"]) for r in json.load(open(sys.argv[1]))["regions"]]' "$REGIONS_FILE")
mapfile -t ZONES < <(python3 -c 'import json,sys; [print(r["zone"]) for r in json.load(open(sys.argv[1]))["regions"]]' "$REGIONS_FILE")
N=${#REGIONS[@]}
[ "$N" -ge 2 ] || { echo "run.sh: $REGIONS_FILE lists fewer than 2 regions" >&2; exit 1; }
printf '%s\n' "${REGIONS[@]}" | grep -qx "$DOWN" || { echo "run.sh: --down-region $DOWN is not in $REGIONS_FILE" >&2; exit 2; }

vm() { echo "$PREFIX-$1"; }
gssh() { # gssh INDEX COMMAND…: a command on region INDEX's VM
  local i=$1; shift
  run gcloud compute ssh "$(vm "${REGIONS[$i]}")" --project "$PROJECT" --zone "${ZONES[$i]}" --quiet --command "$*"
}

cleanup() {
  if [ "$KEEP" = 1 ]; then
    echo "run.sh: --keep: VMs $PREFIX-* and firewall rule $PREFIX-vkv left running"
  else
    for i in "${!REGIONS[@]}"; do
      run gcloud compute instances delete "$(vm "${REGIONS[$i]}")" --project "$PROJECT" --zone "${ZONES[$i]}" --quiet || true
    done
    run gcloud compute firewall-rules delete "$PREFIX-vkv" --project "$PROJECT" --quiet || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

echo "== 1. static binaries (vkv-server, vkv-report)"
run env RUSTFLAGS="-C target-feature=+crt-static" CARGO_PROFILE_RELEASE_STRIP=debuginfo \
  cargo build --release --locked --target "$TARGET" --target-dir target --bin vkv-server -p vkv --bin vkv-report -p vkv-report

echo "== 2. one VM per region"
for i in "${!REGIONS[@]}"; do
  run gcloud compute instances create "$(vm "${REGIONS[$i]}")" --project "$PROJECT" --zone "${ZONES[$i]}" \
    --machine-type "$MACHINE" --image-family debian-12 --image-project debian-cloud --tags "$PREFIX" --quiet
done
IPS=()
for i in "${!REGIONS[@]}"; do
  if [ "$DRY" = 1 ]; then
    IPS+=("10.0.0.$((i + 2))")   # placeholders: the real ones come from gcloud
    run gcloud compute instances describe "$(vm "${REGIONS[$i]}")" --project "$PROJECT" --zone "${ZONES[$i]}" \
      --format 'get(networkInterfaces[0].networkIP)'
  else
    IPS+=("$(gcloud compute instances describe "$(vm "${REGIONS[$i]}")" --project "$PROJECT" --zone "${ZONES[$i]}" \
      --format 'get(networkInterfaces[0].networkIP)')")
  fi
done

echo "== 3. firewall: the vkv port admits only the cluster's VMs (replicas and measuring clients)"
SOURCES=$(printf '%s/32,' "${IPS[@]}"); SOURCES=${SOURCES%,}
run gcloud compute firewall-rules create "$PREFIX-vkv" --project "$PROJECT" --network default \
  --allow "tcp:$PORT" --source-ranges "$SOURCES" --target-tags "$PREFIX" --quiet

echo "== 4. install vkv-server (systemd) with a generated cluster key"
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$WORK/cluster.key"
REPLICAS=""
for i in "${!REGIONS[@]}"; do REPLICAS+="${REGIONS[$i]}=${IPS[$i]}:$PORT,"; done
REPLICAS=${REPLICAS%,}
for i in "${!REGIONS[@]}"; do
  hosts="" ports=""
  for j in "${!REGIONS[@]}"; do
    [ "$j" = "$i" ] && continue
    hosts+="${IPS[$j]},"; ports+="$PORT,"
  done
  sed -e "s|@HOST@|${IPS[$i]}|" -e "s|@PORT@|$PORT|" -e "s|@N@|$N|" \
    -e "s|@HOSTS@|${hosts%,}|" -e "s|@PORTS@|${ports%,}|" deploy/gcp/vkv.service >"$WORK/vkv-$i.service"
  run gcloud compute scp --project "$PROJECT" --zone "${ZONES[$i]}" --quiet \
    "$BIN/vkv-server" "$BIN/vkv-report" "$REGIONS_FILE" "$WORK/cluster.key" "$WORK/vkv-$i.service" \
    "$(vm "${REGIONS[$i]}"):/tmp/"
  gssh "$i" "sudo install -m 755 /tmp/vkv-server /tmp/vkv-report /usr/local/bin/ && sudo mkdir -p /etc/vkv /var/lib/vkv && sudo install -m 600 /tmp/cluster.key /etc/vkv/cluster.key && sudo install -m 644 /tmp/vkv-$i.service /etc/systemd/system/vkv.service && sudo systemctl daemon-reload && sudo systemctl enable --now vkv"
done
for i in "${!REGIONS[@]}"; do
  gssh "$i" "for t in \$(seq 120); do curl -sf http://${IPS[$i]}:$PORT/health && exit 0; sleep 1; done; exit 1"
done

# measure PHASE INDEX [START_US] [BEFORE]: one phase on one region's VM (after the shell
# command BEFORE, if any), its results fetched.
measure() {
  local phase=$1 i=$2 start=${3:-} before=${4:-} extra=""
  [ -n "$start" ] && extra="--start-at-us $start"
  gssh "$i" "${before:+$before && }vkv-report measure $QUICK --regions /tmp/regions.json --down-region $DOWN --phase $phase --region ${REGIONS[$i]} --replicas $REPLICAS $extra --out /tmp/$phase-${REGIONS[$i]}.json"
  run gcloud compute scp --project "$PROJECT" --zone "${ZONES[$i]}" --quiet \
    "$(vm "${REGIONS[$i]}"):/tmp/$phase-${REGIONS[$i]}.json" "$RESULTS/"
}
# everywhere PHASE: the phase on every VM at once; scheduled phases share one start instant.
everywhere() {
  local phase=$1 start="" pids=()
  case "$phase" in lag|conflicts) start=$(( ($(date +%s) + 30) * 1000000 )) ;; esac
  for i in "${!REGIONS[@]}"; do measure "$phase" "$i" "$start" & pids+=($!); done
  for p in "${pids[@]}"; do wait "$p"; done
}

echo "== 5. measure: pings, latency, replication lag, conflicts"
for phase in ping latency lag conflicts; do everywhere "$phase"; done

echo "== 6. one region down ($DOWN), then its catch-up"
for i in "${!REGIONS[@]}"; do [ "${REGIONS[$i]}" = "$DOWN" ] && d=$i; done
gssh "$d" "sudo systemctl stop vkv"
pids=()
for i in "${!REGIONS[@]}"; do [ "$i" = "$d" ] || { measure down "$i" & pids+=($!); }; done
for p in "${pids[@]}"; do wait "$p"; done
# The catch-up phase waits for its replica's /health itself, then times the catch-up from there.
measure catch-up "$d" "" "sudo systemctl start vkv"

echo "== 7. render the report into $OUT/"
run "$BIN/vkv-report" render --regions "$REGIONS_FILE" --down-region "$DOWN" --results "$RESULTS" --out "$OUT"
if [ "$DRY" = 1 ]; then echo "run.sh: dry run done: nothing was created"; else echo "run.sh: report in $OUT/"; fi
