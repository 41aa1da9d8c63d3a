# Sourced by the bench scripts: starts servers that print "listening on ADDR", kills every one
# still running when the script exits, and names the `idguard gen` flags of each check workload.
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT

# Starts `"$@"` with its output in LOG (its stderr in LOG.err) and sets $address and $pid.
start() {
    local log=$1; shift
    "$@" >"$log" 2>"$log.err" &
    pid=$!
    pids+=("$pid")
    for _ in $(seq 1 600); do
        address=$(sed -n 's/.*listening on \(.*\)$/\1/p' "$log" | head -1)
        [ -n "$address" ] && return 0
        sleep 0.1
    done
    echo "server did not start: $*" >&2
    exit 1
}

# Stops the server `start` last started.
stop() { kill "$pid"; wait "$pid" 2>/dev/null || true; }

# Sets the array workload_flags to the `idguard gen` flags of workload $1: `default` (events, 1% of
# checks hit) or `national` (citizens at national steady state); fails on any other name.
set_workload_flags() {
    case "$1" in
        default) workload_flags=(--hit-fraction 0.01) ;;
        national) workload_flags=(--national) ;;
        *) echo "a workload is default or national, not $1" >&2; return 2 ;;
    esac
}
