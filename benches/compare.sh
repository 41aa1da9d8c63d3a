#!/usr/bin/env bash
# Side by side on this machine, with the same data and the same query workload:
#   1. an empty tonic Verification handler (the ceiling for a gRPC service here),
#   2. idguard Check (unary, closed-loop and at half that load), CheckBatch (1,000 per call) and
#      CheckStream,
#   3. Redis holding the same invalid cards in a set, queried with SISMEMBER unpipelined and
#      pipelined (redis-benchmark),
# for each workload in WORKLOAD, then one table with a column per workload: checks/s and p99 for
# each, the ratios idguard / empty handler and idguard / Redis, and the peak RSS of idguard and of
# Redis.
#
# Usage: benches/compare.sh
#   (defaults: COUNT=10000000 QUERIES=1000000 RUN_SECONDS=10 WORKERS=32 WORK=/tmp/idguard-compare
#   WORKLOAD="default national"; each workload's data is generated and imported once per COUNT into
#   WORK/WORKLOAD, then reused)
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
read -ra workloads <<< "${WORKLOAD:-default national}"
. "$(dirname "$0")/server.sh"
for workload in "${workloads[@]}"; do
    set_workload_flags "$workload" || exit 2
done
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

peak_rss_mb() { awk '/VmHWM/ { printf "%.0f", $2 / 1024 }' "/proc/$1/status"; }

# Generates and imports one workload's registry in $dir when it is not there yet, runs every
# measurement on it, and leaves the reports in $dir and the peak RSS figures in $dir/rss.
measure() {
local workload=$1 dir=$WORK/$1 workload_flags
set_workload_flags "$workload"
mkdir -p "$dir"
if [ ! -d "$dir/data" ] || [ "$(cat "$dir/count" 2>/dev/null)" != "$COUNT" ]; then
    rm -rf "$dir/data" "$dir/events.csv"
    gen=("$idguard" gen --out "$dir" --count "$COUNT" --format csv --queries "$QUERIES" "${workload_flags[@]}")
    import=("$idguard" import "$dir/events.csv" --data-dir "$dir/data" --rejects "$dir/rejects")
    if [ "${PIPE_EVENTS:-0}" = 1 ]; then
        mkfifo "$dir/events.csv"
        "${gen[@]}" &
        gen_pid=$!
        "${import[@]}"
        wait "$gen_pid"
        rm "$dir/events.csv"
    else
        "${gen[@]}"
        "${import[@]}"
    fi
    echo "$COUNT" > "$dir/count"
fi

start "$dir/idguard.log" "$idguard" serve --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 --data-dir "$dir/data"
local idguard_pid=$pid idguard_url=http://$address

bench() { # name url mode [extra flags]
    "$idguard" bench --queries "$dir/queries.csv" --server "$2" --mode "$3" --workers "$WORKERS" \
        --seconds "$SECONDS_PER_RUN" --json "$dir/$1.json" "${@:4}" >/dev/null
}
# Unary closed-loop, then at half of the throughput it reached (the p99 target's load).
half_rate() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[0]["checks_per_second"] / 2)' "$1"; }
bench idguard-unary "$idguard_url" unary
bench idguard-unary-half "$idguard_url" unary --rate "$(half_rate "$dir/idguard-unary.json")"
bench idguard-batch "$idguard_url" batch
bench idguard-stream "$idguard_url" stream
local idguard_rss
idguard_rss=$(peak_rss_mb "$idguard_pid")
stop

start "$dir/empty.log" "$empty" --serve 127.0.0.1:0
bench empty-unary "http://$address" unary
bench empty-unary-half "http://$address" unary --rate "$(half_rate "$dir/empty-unary.json")"
bench empty-batch "http://$address" batch
bench empty-stream "http://$address" stream
stop

# Redis: the same invalid cards (lost, stolen, revoked), as `id_number:issue_date` members,
# loaded from the export; left out when none is kept (PIPE_EVENTS=1).
local redis_rss=- redis_members=-
if [ -f "$dir/events.csv" ]; then
    redis_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no >"$dir/redis.log" 2>&1 &
    pid=$!
    pids+=("$pid")
    until redis-cli -p "$redis_port" ping >/dev/null 2>&1; do sleep 0.1; done
    python3 - "$dir/events.csv" <<'PY' | redis-cli -p "$redis_port" --pipe >/dev/null
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
        SISMEMBER invalid "44030519800101__rand_int__:20150101" > "$dir/redis-unpipelined.csv"
    redis-benchmark -p "$redis_port" -c "$WORKERS" -n $((requests * 10)) -r 100000000 -P 64 --csv \
        SISMEMBER invalid "44030519800101__rand_int__:20150101" > "$dir/redis-pipelined.csv"
    redis_rss=$(peak_rss_mb "$pid")
    redis_members=$(redis-cli -p "$redis_port" scard invalid)
    stop
fi
echo "$idguard_rss $redis_rss $redis_members" > "$dir/rss"
}
for workload in "${workloads[@]}"; do measure "$workload"; done

python3 - "$WORK" "$COUNT" "${workloads[@]}" <<'PY'
import csv, json, sys
work, count, *workloads = sys.argv[1:]
def ours(workload, name):
    report = json.load(open(f"{work}/{workload}/{name}.json"))[0]
    return report["checks_per_second"], report["p99_us"] / 1000
def redis(workload, name):
    row = list(csv.DictReader(open(f"{work}/{workload}/redis-{name}.csv")))[-1]
    return float(row["rps"]), float(row["p99_latency_ms"])
rss = {w: open(f"{work}/{w}/rss").read().split() for w in workloads}
with_redis = all(rss[w][2] != "-" for w in workloads)
modes = ("unary", "unary-half", "batch", "stream")
label = {"unary-half": "unary at half load"}
rows = [(f"empty handler, {label.get(m, m)}", "ours", f"empty-{m}") for m in modes]
rows += [(f"idguard, {label.get(m, m)}", "ours", f"idguard-{m}") for m in modes]
if with_redis:
    rows += [(f"Redis SISMEMBER, {m}", "redis", m) for m in ("unpipelined", "pipelined")]
# table[row] is the row's (checks/s, p99 ms) in each workload, in WORKLOAD's order.
table = {name: [(ours if kind == "ours" else redis)(w, report) for w in workloads] for name, kind, report in rows}
for w in workloads:
    sized = "citizens at national steady state" if w == "national" else "events"
    in_redis = f"{rss[w][2]} invalid cards in Redis" if with_redis else "no export kept, so no Redis"
    print(f"{w} workload: {count} {sized}, {in_redis}")
print("p99 is per call (a batch is 1,000 checks); one column pair per workload, side by side")
print(f"{'':36}" + "".join(f" {w + ' checks/s':>18} {'p99 ms':>9}" for w in workloads))
for name, _, _ in rows:
    print(f"{name:36}" + "".join(f" {rate:18.0f} {p99:9.2f}" for rate, p99 in table[name]))
def ratios(of, to):
    return " ".join(f"{a[0] / b[0]:.2f}" for a, b in zip(table[of], table[to]))
for m in ("unary", "batch", "stream"):
    print(f"idguard / empty handler, {m}: {ratios(f'idguard, {m}', f'empty handler, {m}')}")
if with_redis:
    for m in ("batch", "stream"):
        print(f"idguard {m} / Redis pipelined: {ratios(f'idguard, {m}', 'Redis SISMEMBER, pipelined')}")
    print(f"idguard unary / Redis unpipelined: {ratios('idguard, unary', 'Redis SISMEMBER, unpipelined')}")
for w in workloads:
    idguard_rss, redis_rss, _ = rss[w]
    print(f"peak RSS: idguard {idguard_rss} MB" + (f", Redis {redis_rss} MB" if with_redis else "") + f" ({w} workload)")
PY
