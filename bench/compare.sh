#!/usr/bin/env bash
# Side-by-side benchmark of keel and etcd on this machine, in one run.
#
# Starts a fresh three-member etcd and then a fresh three-member keel on
# 127.0.0.1 (same flags, same heartbeat/election settings), runs the same
# workload set against each with keel-bench, and writes
# bench/results/<date>-<profile>.{json,md,svg}: every run, keel/etcd ratios, a
# markdown table and an SVG chart. Absolute numbers on small shared machines are
# noise; the ratios from one run are the result.
#
# Usage: bench/compare.sh [--profile short|full|footprint] [--systems "etcd keel"]
#                         [--rebuild] [--keep-data] [--out-dir DIR]
# Env:   KEEL_BIN, BENCH_BIN (use these binaries instead of target/release/...),
#        BENCH_WORK_DIR (data dirs; default target/bench-work, on the repo's disk),
#        BENCH_PORT_BASE (default 31000; etcd uses base+1.., keel base+1001..).
#
# Only processes this script started are ever signalled (trap on EXIT), only
# 127.0.0.1 is bound, and the data dirs are removed at exit unless --keep-data.
set -euo pipefail

PROFILE=short
SYSTEMS="etcd keel"
REBUILD=0
KEEP_DATA=0
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT_DIR="$REPO/bench/results"

while [[ $# -gt 0 ]]; do
  case "$1" in
    --profile) PROFILE=$2; shift 2 ;;
    --systems) SYSTEMS=$2; shift 2 ;;
    --rebuild) REBUILD=1; shift ;;
    --keep-data) KEEP_DATA=1; shift ;;
    --out-dir) OUT_DIR=$2; shift 2 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "compare.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

case "$PROFILE" in
  short) DURATION_S=3; KEYS=2000; FOOTPRINT_KEYS=20000; FSYNC_S=2 ;;
  full) DURATION_S=20; KEYS=100000; FOOTPRINT_KEYS=1000000; FSYNC_S=5 ;;
  # Only the footprint and restart measures, at full size (about 5 minutes).
  footprint) DURATION_S=0; KEYS=0; FOOTPRINT_KEYS=1000000; FSYNC_S=2 ;;
  *) echo "compare.sh: --profile must be short, full or footprint" >&2; exit 2 ;;
esac

log() { printf '\n== %s\n' "$*" >&2; }
die() { echo "compare.sh: $*" >&2; exit 1; }

PORT_BASE=${BENCH_PORT_BASE:-31000}
WORK_ROOT=${BENCH_WORK_DIR:-$REPO/target/bench-work}
WORK="$WORK_ROOT/run-$$"
RUNS="$WORK/runs.jsonl"
STARTED_PIDS=()

cleanup() {
  local pid
  for pid in "${STARTED_PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for _ in $(seq 50); do
    local alive=0
    for pid in "${STARTED_PIDS[@]}"; do
      kill -0 "$pid" 2>/dev/null && alive=1
    done
    [[ $alive == 0 ]] && break
    sleep 0.1
  done
  for pid in "${STARTED_PIDS[@]}"; do
    kill -KILL "$pid" 2>/dev/null || true
  done
  if [[ $KEEP_DATA == 0 ]]; then
    rm -rf "$WORK"
  else
    echo "compare.sh: kept $WORK" >&2
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- phase 0: tools -----------------------------------------------------------
apt_install() {
  [[ $(id -u) == 0 ]] || return 1
  if [[ -z ${APT_UPDATED:-} ]]; then
    apt-get update -qq >&2 || return 1
    APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
}

if [[ " $SYSTEMS " == *" etcd "* ]] && ! command -v etcd >/dev/null; then
  log "installing etcd-server (Debian)"
  apt_install etcd-server || die "etcd is missing and could not be installed (run as root)"
fi
if ! command -v fio >/dev/null; then
  log "installing fio (Debian) for the fsync ceiling"
  apt_install fio || echo "compare.sh: fio unavailable; using keel-bench fsync-rate" >&2
fi

cd "$REPO"
if [[ -z ${BENCH_BIN:-} ]]; then
  log "building keel-bench (release)"
  cargo build --release -p keel-bench >&2
  BENCH_BIN="$REPO/target/release/keel-bench"
fi
KEEL_BIN=${KEEL_BIN:-$REPO/target/release/keel}
if [[ " $SYSTEMS " == *" keel "* ]] && { [[ ! -x $KEEL_BIN ]] || [[ $REBUILD == 1 ]]; }; then
  log "building keel (release)"
  cargo build --release --bin keel >&2
fi
mkdir -p "$WORK" "$OUT_DIR"
: >"$RUNS"

# --- phase 1: the disk's fsync ceiling ------------------------------------------
log "fsync ceiling of $WORK (4 KiB writes + fdatasync, ${FSYNC_S}s)"
FSYNC_ARGS=()
if command -v fio >/dev/null && fio --name=fsync-ceiling --directory="$WORK" --rw=write --bs=4k \
  --size=64m --ioengine=sync --fdatasync=1 --time_based --runtime="$FSYNC_S" \
  --output-format=json --output="$WORK/fio.json" >/dev/null 2>&1; then
  FSYNC_ARGS=(--fio-json "$WORK/fio.json")
  rm -f "$WORK"/fsync-ceiling.*
else
  "$BENCH_BIN" fsync-rate --dir "$WORK" --seconds "$FSYNC_S" >"$WORK/fsync.jsonl"
  FSYNC_ARGS=(--fsync-json "$WORK/fsync.jsonl")
fi

# --- cluster control -------------------------------------------------------------
declare -a MEMBER_PID MEMBER_DIR MEMBER_CMD
ENDPOINTS=""

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start_member() { # system index
  local sys=$1 i=$2
  # shellcheck disable=SC2086
  ${MEMBER_CMD[$i]} >>"$WORK/$sys-$i.log" 2>&1 &
  MEMBER_PID[$i]=$!
  STARTED_PIDS+=("$!")
}

start_cluster() { # system base-port
  local sys=$1 base=$2 bin cluster="" i
  case "$sys" in
    etcd) bin=$(command -v etcd) ;;
    keel) bin=$KEEL_BIN ;;
  esac
  for i in 1 2 3; do
    port_free $((base + i)) && port_free $((base + 100 + i)) || die "port $((base + i)) or $((base + 100 + i)) in use"
    cluster+="$sys$i=http://127.0.0.1:$((base + 100 + i)),"
  done
  cluster=${cluster%,}
  ENDPOINTS=""
  for i in 1 2 3; do
    MEMBER_DIR[$i]="$WORK/$sys-$i.data"
    MEMBER_CMD[$i]="$bin --name $sys$i --data-dir ${MEMBER_DIR[$i]}
      --listen-client-urls http://127.0.0.1:$((base + i)) --advertise-client-urls http://127.0.0.1:$((base + i))
      --listen-peer-urls http://127.0.0.1:$((base + 100 + i)) --initial-advertise-peer-urls http://127.0.0.1:$((base + 100 + i))
      --initial-cluster $cluster --initial-cluster-state new --initial-cluster-token bench-$sys
      --heartbeat-interval 100 --election-timeout 1000"
    start_member "$sys" "$i"
    ENDPOINTS+="127.0.0.1:$((base + i)),"
  done
  ENDPOINTS=${ENDPOINTS%,}
  local ep
  for ep in ${ENDPOINTS//,/ }; do
    "$BENCH_BIN" first-read --endpoints "$ep" --timeout-s 60 --label "$sys" >/dev/null ||
      die "$sys member $ep did not serve a linearizable read within 60s (see $WORK/$sys-*.log)"
  done
}

# Stops a member and forgets its PID once reaped, so the EXIT trap can never
# signal a recycled PID that belongs to someone else.
stop_member() { # index
  local pid=${MEMBER_PID[$1]} p kept=()
  kill -TERM "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  for p in "${STARTED_PIDS[@]}"; do
    [[ $p == "$pid" ]] || kept+=("$p")
  done
  STARTED_PIDS=("${kept[@]}")
}

stop_cluster() {
  local i
  for i in 1 2 3; do
    kill -TERM "${MEMBER_PID[$i]}" 2>/dev/null || true
  done
  for i in 1 2 3; do
    stop_member "$i"
  done
}

# Runs one keel-bench measurement and appends its JSON line to $RUNS. A run
# that prints no JSON (a crash) still leaves a line, with status "crashed".
run() { # system case subcommand [args...]
  local sys=$1 case=$2 sub=$3 line
  shift 3
  line=$("$BENCH_BIN" "$sub" --endpoints "$ENDPOINTS" --label "$sys" --case "$case" \
    --server-pids "$(IFS=,; echo "${MEMBER_PID[*]}")" --timeout-ms 10000 "$@" | tail -n 1) || true
  if [[ $line == "{"* ]]; then
    echo "$line" >>"$RUNS"
  else
    echo "compare.sh: $sys $case produced no result" >&2
    printf '{"workload":"%s","case":"%s","label":"%s","status":"crashed","clients":0,"conns":0,"ops":0,"errors":1,"duration_s":0,"ops_per_s":0,"p50_ms":0,"p90_ms":0,"p99_ms":0,"max_ms":0,"mean_ms":0}\n' \
      "$sub" "$case" "$sys" >>"$RUNS"
  fi
}

workloads() { # system
  local s=$1
  [[ $PROFILE == footprint ]] || throughput_workloads "$s"
  run "$s" footprint footprint --clients 64 --count "$FOOTPRINT_KEYS" --prefix footprint/ \
    --pids "$(IFS=,; echo "${MEMBER_PID[*]}")" --data-dirs "$(IFS=,; echo "${MEMBER_DIR[*]}")"
}

throughput_workloads() { # system
  local s=$1 d=(--duration-s "$DURATION_S") k=(--keys "$KEYS")
  run "$s" put/c1 put --clients 1 "${d[@]}" "${k[@]}"
  run "$s" put/c16 put --clients 16 "${d[@]}" "${k[@]}"
  run "$s" put/c256 put --clients 256 "${d[@]}" "${k[@]}"
  run "$s" range-l/c256 range --consistency l --clients 256 --prefill "${d[@]}" "${k[@]}"
  run "$s" range-s/c256 range --consistency s --clients 256 "${d[@]}" "${k[@]}"
  run "$s" mixed-l/c64 mixed --consistency l --clients 64 "${d[@]}" "${k[@]}"
  run "$s" txn-cas-own/c64 txn-cas --clients 64 "${d[@]}" "${k[@]}"
  run "$s" txn-cas-shared/c64-k16 txn-cas --shared-keys --clients 64 --keys 16 "${d[@]}"
  run "$s" lease-put/c64 lease-put --clients 64 "${d[@]}" "${k[@]}"
  run "$s" lock/c16-m1 lock --clients 16 --locks 1 "${d[@]}"
  run "$s" lock/c16-m16 lock --clients 16 --locks 16 "${d[@]}"
  run "$s" lock-recipe/c16-m1 lock --recipe --clients 16 --locks 1 "${d[@]}"
  run "$s" watch/w100-r100 watch --watchers 100 --rate 100 "${d[@]}"
}

# Restart member 3 and time from its spawn to its first linearizable read.
restart_member() { # system
  local sys=$1 t0 line
  stop_member 3
  t0=$(date +%s%N)
  start_member "$sys" 3
  line=$("$BENCH_BIN" first-read --endpoints "${ENDPOINTS##*,}" --since-unix-ns "$t0" --timeout-s 120 \
    --label "$sys" --case restart-first-read | tail -n 1) || true
  [[ $line == "{"* ]] && echo "$line" >>"$RUNS"
}

# --- phase 2: each system, fresh, one after the other ----------------------------
offset=0
for sys in $SYSTEMS; do
  log "$sys: starting a fresh three-member cluster"
  start_cluster "$sys" $((PORT_BASE + offset))
  log "$sys: workloads (profile $PROFILE, ${DURATION_S}s each)"
  workloads "$sys"
  log "$sys: restart member 3, time to first linearizable read"
  restart_member "$sys"
  stop_cluster
  offset=$((offset + 1000))
done

# --- phase 3: results --------------------------------------------------------------
DATE=$(date +%F)
OUT="$OUT_DIR/$DATE-$PROFILE.json"
NOTES=(--note "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo); etcd $(etcd --version 2>/dev/null | awk '/etcd Version/ {print $3}'); keel $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$REPO" diff --quiet 2>/dev/null || echo '+dirty')")
NOTES+=(--note "profile $PROFILE: ${DURATION_S}s per workload, key space $KEYS, footprint $FOOTPRINT_KEYS keys x 256 B; server CPU is summed over the three members for the measured window")
log "writing $OUT (+ .md, .svg)"
"$BENCH_BIN" collect --runs "$RUNS" --out "$OUT" --profile "$PROFILE" --date "$DATE" "${FSYNC_ARGS[@]}" "${NOTES[@]}"
echo "compare.sh: wrote $OUT, ${OUT%.json}.md, ${OUT%.json}.svg" >&2
