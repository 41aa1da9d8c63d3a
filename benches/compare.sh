#!/usr/bin/env bash
# Side by side on this machine, with the same data and the same query workload:
#   1. an empty tonic Verification handler (the ceiling for a gRPC service here),
#   2. idguard Check (unary, closed-loop and at half that load), CheckBatch (1,000 per call) and
#      CheckStream,
#   3. Redis holding the same invalid cards in a set, queried with SISMEMBER unpipelined and
#      pipelined (redis-benchmark),
# then one table: checks/s and p99 for each, the ratios idguard / empty handler and
# idguard / Redis, and the peak RSS of idguard and of Redis.
#
# Usage: benches/compare.sh
#   (defaults: COUNT=10000000 QUERIES=1000000 RUN_SECONDS=10 WORKERS=32 WORK=/tmp/idguard-compare
#   WORKLOAD=default; the data is generated and imported once per WORKLOAD and COUNT, then reused)
# PIPE_EVENTS=1: the generator writes the export into a FIFO the import reads, so that the export
#   never takes disk beside the import's work dir (200M citizens here). No export is kept, so the
#   Redis rows, which load their set from it, are left out.
# WORKLOAD=default: COUNT events, and checks of which 99% present a number with no record.
# WORKLOAD=national: COUNT citizens at national steady state (`idguard gen --national`: every
#   current card issued), and checks of which 99.99% present a citizen's current card.
set -euo pipefail
COUNT=${COUNT:-10000000}
QUERIES=${QUERIES:-1000000}
# Not SECONDS: bash sets that one itself (seconds since the shell started), so a default never applied.
SECONDS_PER_RUN=${RUN_SECONDS:-10}
WORKERS=${WORKERS:-32}
WORK=${WORK:-/tmp/idguard-compare}
WORKLOAD=${WORKLOAD:-default}
case "$WORKLOAD" in
    default) workload_flags=(--hit-fraction 0.01) ;;
    national) workload_flags=(--national) ;;
    *) echo "WORKLOAD must be default or national, not $WORKLOAD" >&2; exit 2 ;;
esac
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/idguard/target}
# Run by `cargo test` (tests/integration/compare.rs), the script inherits what cargo sets for a
# test: CARGO_MANIFEST_DIR and the like. ring's build script tracks CARGO_MANIFEST_DIR, so a build
# here with it set would leave ring, tonic and idguard to be compiled again by the next cargo
# command run from a shell (`make run` after `make test`).
unset $(compgen -e | grep -E '^(CARGO_(MANIFEST|PKG|CRATE|BIN|PRIMARY|TARGET_TMPDIR)|OUT_DIR$)' || true)
cd "$(dirname "$0")/.."

# Redis among them.
.ci/prereqs

# Built as the Makefile builds it (`cargo test --no-run`), so that both share one build.
cargo test --release --no-run --quiet
empty=$(cargo bench --bench empty_server --no-run --message-format=json 2>/dev/null \
    | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("target", {}).get("name") == "empty_server" and m.get("executable"):
        print(m["executable"])')
idguard=$CARGO_TARGET_DIR/release/idguard
mkdir -p "$WORK"
. "$(dirname "$0")/server.sh"

peak_rss_mb() { awk '/VmHWM/ { printf "%.0f", $2 / 1024 }' "/proc/$1/status"; }

if [ ! -d "$WORK/data" ] || [ "$(cat "$WORK/count" 2>/dev/null)" != "$WORKLOAD $COUNT" ]; then
    rm -rf "$WORK/data" "$WORK/events.csv"
    gen=("$idguard" gen --out "$WORK" --count "$COUNT" --format csv --queries "$QUERIES" "${workload_flags[@]}")
    import=("$idguard" import "$WORK/events.csv" --data-dir "$WORK/data" --rejects "$WORK/rejects")
    if [ "${PIPE_EVENTS:-0}" = 1 ]; then
        mkfifo "$WORK/events.csv"
        "${gen[@]}" &
        gen_pid=$!
        "${import[@]}"
        wait "$gen_pid"
        rm "$WORK/events.csv"
    else
        "${gen[@]}"
        "${import[@]}"
    fi
    echo "$WORKLOAD $COUNT" > "$WORK/count"
fi

start "$WORK/idguard.log" "$idguard" serve --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 --data-dir "$WORK/data"
idguard_pid=$pid idguard_url=http://$address

bench() { # name url mode [extra flags]
    "$idguard" bench --queries "$WORK/queries.csv" --server "$2" --mode "$3" --workers "$WORKERS" \
        --seconds "$SECONDS_PER_RUN" --json "$WORK/$1.json" "${@:4}" >/dev/null
}
# Unary closed-loop, then at half of the throughput it reached (the p99 target's load).
half_rate() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[0]["checks_per_second"] / 2)' "$1"; }
bench idguard-unary "$idguard_url" unary
bench idguard-unary-half "$idguard_url" unary --rate "$(half_rate "$WORK/idguard-unary.json")"
bench idguard-batch "$idguard_url" batch
bench idguard-stream "$idguard_url" stream
idguard_rss=$(peak_rss_mb "$idguard_pid")
kill "$idguard_pid"

start "$WORK/empty.log" "$empty" --serve 127.0.0.1:0
bench empty-unary "http://$address" unary
bench empty-unary-half "http://$address" unary --rate "$(half_rate "$WORK/empty-unary.json")"
bench empty-batch "http://$address" batch
bench empty-stream "http://$address" stream
kill "$pid"

# Redis: the same invalid cards (lost, stolen, revoked), as `id_number:issue_date` members,
# loaded from the export; left out when none is kept (PIPE_EVENTS=1).
redis_rss=- redis_members=-
measure_redis() {
redis_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no >"$WORK/redis.log" 2>&1 &
redis_pid=$!
pids+=("$redis_pid")
until redis-cli -p "$redis_port" ping >/dev/null 2>&1; do sleep 0.1; done
python3 - "$WORK/events.csv" <<'PY' | redis-cli -p "$redis_port" --pipe >/dev/null
import csv, sys
def command(*parts):
    out = [f"*{len(parts)}\r\n"]
    for part in parts:
        out.append(f"${len(part.encode())}\r\n{part}\r\n")
    return "".join(out)
members = []
with open(sys.argv[1], newline="") as f:
    for row in csv.DictReader(f):
        if row["kind"] in ("lost", "stolen", "revoked"):
            members.append(f'{row["id_number"]}:{row["issue_date"]}')
            if len(members) == 1000:
                sys.stdout.write(command("SADD", "invalid", *members)); members = []
if members:
    sys.stdout.write(command("SADD", "invalid", *members))
PY
requests=$((SECONDS_PER_RUN * 50000))
redis-benchmark -p "$redis_port" -c "$WORKERS" -n "$requests" -r 100000000 --csv \
    SISMEMBER invalid "44030519800101__rand_int__:20150101" > "$WORK/redis-unpipelined.csv"
redis-benchmark -p "$redis_port" -c "$WORKERS" -n $((requests * 10)) -r 100000000 -P 64 --csv \
    SISMEMBER invalid "44030519800101__rand_int__:20150101" > "$WORK/redis-pipelined.csv"
redis_rss=$(peak_rss_mb "$redis_pid")
redis_members=$(redis-cli -p "$redis_port" scard invalid)
}
if [ -f "$WORK/events.csv" ]; then measure_redis; fi

python3 - "$WORK" "$idguard_rss" "$redis_rss" "$redis_members" "$COUNT" "$WORKLOAD" <<'PY'
import csv, json, sys
work, idguard_rss, redis_rss, members, count, workload = sys.argv[1:]
def ours(name):
    report = json.load(open(f"{work}/{name}.json"))[0]
    return report["checks_per_second"], report["p99_us"] / 1000
def redis(name):
    row = list(csv.DictReader(open(f"{work}/redis-{name}.csv")))[-1]
    return float(row["rps"]), float(row["p99_latency_ms"])
modes = ("unary", "unary-half", "batch", "stream")
label = {"unary-half": "unary at half load"}
rows = [(f"empty handler, {label.get(m, m)}", ours(f"empty-{m}")) for m in modes]
rows += [(f"idguard, {label.get(m, m)}", ours(f"idguard-{m}")) for m in modes]
with_redis = members != "-"
if with_redis:
    rows += [(f"Redis SISMEMBER, {m}", redis(m)) for m in ("unpipelined", "pipelined")]
table = dict(rows)
sized = "citizens at national steady state" if workload == "national" else "events"
in_redis = f"{members} invalid cards in Redis" if with_redis else "no export kept, so no Redis"
print(f"{workload} workload: {count} {sized}, {in_redis}; p99 is per call (a batch is 1,000 checks)")
print(f"{'':36} {'checks/s':>12} {'p99 ms':>9}")
for name, (rate, p99) in rows:
    print(f"{name:36} {rate:12.0f} {p99:9.2f}")
for m in ("unary", "batch", "stream"):
    print(f"idguard / empty handler, {m}: {table[f'idguard, {m}'][0] / table[f'empty handler, {m}'][0]:.2f}")
if with_redis:
    for m in ("batch", "stream"):
        print(f"idguard {m} / Redis pipelined: {table[f'idguard, {m}'][0] / table['Redis SISMEMBER, pipelined'][0]:.2f}")
    print(f"idguard unary / Redis unpipelined: {table['idguard, unary'][0] / table['Redis SISMEMBER, unpipelined'][0]:.2f}")
print(f"peak RSS: idguard {idguard_rss} MB" + (f", Redis {redis_rss} MB" if with_redis else ""))
PY
