#!/usr/bin/env bash
# Write throughput before and after a change, side by side in one run: `idguard submit` of the
# same generated events into a fresh registry of each binary, alternating old and new in each
# round so that this shared machine's noise falls on both alike. Prints events/s of each and the
# ratio new / old.
#
# Usage: benches/writes.sh OLD_BINARY [NEW_BINARY]
#   (defaults: NEW_BINARY=$CARGO_TARGET_DIR/release/idguard COUNT=200000 ROUNDS=3
#   WORK=/tmp/idguard-writes)
set -euo pipefail
OLD=$(realpath "$1")
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/idguard/target}
NEW=$(realpath "${2:-$CARGO_TARGET_DIR/release/idguard}")
COUNT=${COUNT:-200000}
ROUNDS=${ROUNDS:-3}
WORK=${WORK:-/tmp/idguard-writes}
mkdir -p "$WORK"
. "$(dirname "$0")/server.sh"

if [ "$(cat "$WORK/count" 2>/dev/null)" != "$COUNT" ]; then
    "$NEW" gen --out "$WORK" --count "$COUNT" --format csv --queries 1
    echo "$COUNT" > "$WORK/count"
fi

run() { # which round; prints events/s
    local binary=$OLD; [ "$1" = new ] && binary=$NEW
    rm -rf "$WORK/data"
    start "$WORK/$1.log" "$binary" serve --listen 127.0.0.1:0 --no-metrics --data-dir "$WORK/data"
    local began ended
    began=$(date +%s.%N)
    # Exit 2 lists refused records (the generator's deliberate duplicates and conflicts).
    "$NEW" submit "$WORK/events.csv" --server "http://$address" >/dev/null 2>&1 || [ $? -eq 2 ]
    ended=$(date +%s.%N)
    stop
    python3 -c "print(round($COUNT / ($ended - $began)))"
}

declare -A rates=([old]="" [new]="")
for round in $(seq 1 "$ROUNDS"); do
    for which in old new; do
        rate=$(run "$which")
        rates[$which]="${rates[$which]} $rate"
        echo "round $round $which: $rate events/s"
    done
done
python3 - "${rates[old]}" "${rates[new]}" <<'PY'
import statistics, sys
old, new = ([int(x) for x in arg.split()] for arg in sys.argv[1:3])
print(f"Submit, median of {len(old)} rounds: old {statistics.median(old)} events/s, "
      f"new {statistics.median(new)} events/s, new/old {statistics.median(new) / statistics.median(old):.3f}")
PY
