#!/usr/bin/env bash
# Before and after a change, side by side in one run: the same data and query workload (as
# benches/compare.sh makes them) against two idguard binaries, unary, batch (1,000 per call) and
# stream checks, alternating old and new in each round so that this shared machine's noise falls
# on both alike. Prints checks/s and p99 of each and the ratio new / old.
#
# Usage: benches/before_after.sh OLD_BINARY [NEW_BINARY]
#   (defaults: NEW_BINARY=$CARGO_TARGET_DIR/release/idguard COUNT=10000000 QUERIES=1000000
#   RUN_SECONDS=10 WORKERS=32 ROUNDS=2 MODES="unary batch stream" WORK=/tmp/idguard-before-after;
#   each binary imports the data into a data dir of its own, since a change may move the schema)
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
WORK=${WORK:-/tmp/idguard-before-after}
mkdir -p "$WORK"
. "$(dirname "$0")/server.sh"

if [ "$(cat "$WORK/count" 2>/dev/null)" != "$COUNT" ]; then
    rm -rf "$WORK"/data-*
    "$NEW" gen --out "$WORK" --count "$COUNT" --format csv --queries "$QUERIES" --hit-fraction 0.01
    for which in old new; do
        binary=$OLD; [ "$which" = new ] && binary=$NEW
        "$binary" import "$WORK/events.csv" --data-dir "$WORK/data-$which" --rejects "$WORK/rejects-$which"
    done
    echo "$COUNT" > "$WORK/count"
fi

run() { # which mode round
    local binary=$OLD; [ "$1" = new ] && binary=$NEW
    start "$WORK/$1.log" "$binary" serve --listen 127.0.0.1:0 --no-metrics --data-dir "$WORK/data-$1"
    "$NEW" bench --queries "$WORK/queries.csv" --server "http://$address" --mode "$2" \
        --workers "$WORKERS" --seconds "$SECONDS_PER_RUN" --json "$WORK/$1-$2-$3.json" >/dev/null
    stop
}

for round in $(seq 1 "$ROUNDS"); do
    for mode in $MODES; do
        run old "$mode" "$round"
        run new "$mode" "$round"
    done
done

python3 - "$WORK" "$ROUNDS" "$COUNT" $MODES <<'PY'
import json, sys
work, rounds, count, modes = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
def report(which, mode, r):
    data = json.load(open(f"{work}/{which}-{mode}-{r}.json"))[0]
    return data["checks_per_second"], data["p99_us"] / 1000
print(f"{count} events; checks/s (p99 ms per call) of the old and the new binary, alternating")
print(f"{'mode':8} {'round':>5} {'old':>22} {'new':>22} {'new / old':>10}")
for mode in modes:
    for r in range(1, rounds + 1):
        (old, old_p99), (new, new_p99) = report("old", mode, r), report("new", mode, r)
        print(f"{mode:8} {r:5} {old:13.0f} ({old_p99:5.2f}) {new:13.0f} ({new_p99:5.2f}) {new / old:10.3f}")
PY
