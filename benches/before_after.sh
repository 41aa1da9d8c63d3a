#!/usr/bin/env bash
# Before and after a change, side by side in one run: the same data and query workload (as
# benches/compare.sh makes them) against two idguard binaries, unary, batch (1,000 per call) and
# stream checks, alternating old and new in each round so that this shared machine's noise falls
# on both alike. Prints checks/s and p99 of each and the ratio new / old, then the server's CPU
# time per check (user and system, from /proc: steadier than the rates, since the load generator
# shares the two cores) and its peak RSS.
#
# Usage: benches/before_after.sh OLD_BINARY [NEW_BINARY]
#   (defaults: NEW_BINARY=$CARGO_TARGET_DIR/release/idguard COUNT=10000000 QUERIES=1000000
#   RUN_SECONDS=10 WORKERS=32 ROUNDS=2 MODES="unary batch stream" WORKLOAD=default
#   WORK=/tmp/idguard-before-after/WORKLOAD; each binary imports the data into a data dir of its
#   own, since a change may move the schema)
# WORKLOAD=default: COUNT events, 1% of checks hit; WORKLOAD=national: COUNT citizens at national
#   steady state, as benches/compare.sh makes them.
set -euo pipefail
OLD=$(realpath "$1")
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/idguard/target}
NEW=$(realpath "${2:-$CARGO_TARGET_DIR/release/idguard}")
COUNT=${COUNT:-10000000}
QUERIES=${QUERIES:-1000000}
# Not SECONDS: bash sets that one itself.
SECONDS_PER_RUN=${RUN_SECONDS:-10}
WORKERS=${WORKERS:-32}
ROUNDS=${ROUNDS:-2}
MODES=${MODES:-unary batch stream}
WORKLOAD=${WORKLOAD:-default}
. "$(dirname "$0")/server.sh"
set_workload_flags "$WORKLOAD" || exit 2
WORK=${WORK:-/tmp/idguard-before-after/$WORKLOAD}
mkdir -p "$WORK"

if [ "$(cat "$WORK/count" 2>/dev/null)" != "$COUNT" ]; then
    rm -rf "$WORK"/data-*
    "$NEW" gen --out "$WORK" --count "$COUNT" --format csv --queries "$QUERIES" "${workload_flags[@]}"
    for which in old new; do
        binary=$OLD; [ "$which" = new ] && binary=$NEW
        "$binary" import "$WORK/events.csv" --data-dir "$WORK/data-$which" --rejects "$WORK/rejects-$which"
    done
    echo "$COUNT" > "$WORK/count"
fi

# A process's CPU time so far, user and system, in clock ticks.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

run() { # which mode round
    local binary=$OLD; [ "$1" = new ] && binary=$NEW
    start "$WORK/$1.log" "$binary" serve --listen 127.0.0.1:0 --no-metrics --data-dir "$WORK/data-$1"
    local cpu_before
    cpu_before=$(cpu_ticks "$pid")
    "$NEW" bench --queries "$WORK/queries.csv" --server "http://$address" --mode "$2" \
        --workers "$WORKERS" --seconds "$SECONDS_PER_RUN" --json "$WORK/$1-$2-$3.json" >/dev/null
    echo "$(($(cpu_ticks "$pid") - cpu_before)) $(getconf CLK_TCK) $(awk '/VmHWM/ { print $2 }' "/proc/$pid/status")" \
        > "$WORK/$1-$2-$3.server"
    stop
}

for round in $(seq 1 "$ROUNDS"); do
    for mode in $MODES; do
        run old "$mode" "$round"
        run new "$mode" "$round"
    done
done

python3 - "$WORK" "$ROUNDS" "$COUNT" "$WORKLOAD" $MODES <<'PY'
import json, sys
work, rounds, count, workload, modes = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5:]
def load(which, mode, r):
    return json.load(open(f"{work}/{which}-{mode}-{r}.json"))[0]
def report(which, mode, r):
    data = load(which, mode, r)
    return data["checks_per_second"], data["p99_us"] / 1000
def server(which, mode, r):
    ticks, per_second, hwm_kb = map(int, open(f"{work}/{which}-{mode}-{r}.server").read().split())
    return ticks / per_second * 1e6 / max(load(which, mode, r)["checks"], 1), hwm_kb / 1024
print(f"{count} ({workload}); checks/s (p99 ms per call) of the old and the new binary, alternating")
print(f"{'mode':8} {'round':>5} {'old':>22} {'new':>22} {'new / old':>10}")
for mode in modes:
    for r in range(1, rounds + 1):
        (old, old_p99), (new, new_p99) = report("old", mode, r), report("new", mode, r)
        print(f"{mode:8} {r:5} {old:13.0f} ({old_p99:5.2f}) {new:13.0f} ({new_p99:5.2f}) {new / old:10.3f}")
print("server CPU µs per check, and peak RSS MB, of the old and the new binary")
for mode in modes:
    for r in range(1, rounds + 1):
        (old, old_rss), (new, new_rss) = server("old", mode, r), server("new", mode, r)
        print(f"{mode:8} {r:5} {old:9.3f} {old_rss:6.0f} MB {new:9.3f} {new_rss:6.0f} MB {new / old:10.3f}")
PY
