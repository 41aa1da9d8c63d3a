#!/usr/bin/env bash
# What OpenTelemetry export costs unary checks, side by side in one run: the default build, the
# `otel` build without an endpoint, with an unreachable collector, with a live collector, and with
# a live collector at 1% sampling. The collector is a small Python OTLP receiver (grpcio and
# opentelemetry-proto in the example client's venv). Usage: benches/otel.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/idguard/target}
rounds=${1:-2}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

cargo build --release --quiet
cp "$CARGO_TARGET_DIR/release/idguard" "$work/idguard-default"
cargo build --release --quiet --features otel
cp "$CARGO_TARGET_DIR/release/idguard" "$work/idguard-otel"
"$work/idguard-default" gen --count 200000 --queries 100000 --out "$work/gen" >/dev/null

venv=$HOME/.cache/idguard/python-venv
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install --quiet grpcio opentelemetry-proto
cat > "$work/collector.py" <<'PY'
import time
from concurrent import futures
import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
received = 0
class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    def Export(self, request, context):
        global received
        received += sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
        return trace_service_pb2.ExportTraceServiceResponse()
server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Collector(), server)
port = server.add_insecure_port("127.0.0.1:0")
server.start()
print(port, flush=True)
while True:
    time.sleep(1)
PY
"$venv/bin/python" "$work/collector.py" > "$work/collector.port" &
for _ in $(seq 100); do [ -s "$work/collector.port" ] && break; sleep 0.1; done
collector="http://127.0.0.1:$(head -1 "$work/collector.port")"

run() { # label binary [VAR=value ...]
    local label=$1 binary=$2
    shift 2
    rm -rf "$work/data"
    env "$@" "$binary" serve --listen 127.0.0.1:0 --no-metrics --data-dir "$work/data" \
        > "$work/addr" 2>/dev/null &
    local pid=$!
    for _ in $(seq 100); do grep -q listening "$work/addr" && break; sleep 0.1; done
    local url="http://$(sed -n 's/idguard listening on //p' "$work/addr")"
    echo "$label: $("$work/idguard-default" bench --queries "$work/gen/queries.csv" --mode unary \
        --workers 32 --seconds 6 --server "$url" 2>&1 | grep 'checks/s')"
    kill -TERM $pid
    wait $pid
}
for round in $(seq "$rounds"); do
    echo "round $round"
    run "default build" "$work/idguard-default"
    run "otel build, no endpoint" "$work/idguard-otel"
    run "otel, collector unreachable" "$work/idguard-otel" OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:9
    run "otel, live collector" "$work/idguard-otel" OTEL_EXPORTER_OTLP_ENDPOINT="$collector"
    run "otel, live collector, 1% sampled" "$work/idguard-otel" OTEL_EXPORTER_OTLP_ENDPOINT="$collector" \
        OTEL_TRACES_SAMPLER=parentbased_traceidratio OTEL_TRACES_SAMPLER_ARG=0.01
done
