#!/usr/bin/env bash
# Runs one cargo-fuzz target for a while: tests/fuzz/run.sh card|event [SECONDS]
#
# Needs the nightly toolchain and `cargo install cargo-fuzz`. RocksDB's C++ is not compiled again
# for nightly: the library the main (stable) build made is linked instead, so run `make test`
# (or any release build) first.
set -euo pipefail
target=${1:?usage: run.sh card|event [SECONDS]}
seconds=${2:-600}
cd "$(dirname "$0")"
main_target=${IDGUARD_TARGET_DIR:-$HOME/.cache/idguard/target}
library=$(find "$main_target/release/build" -name librocksdb.a -print -quit 2>/dev/null || true)
if [ -z "$library" ]; then
    echo "no librocksdb.a under $main_target: build idguard first (make test)" >&2
    exit 1
fi
export ROCKSDB_LIB_DIR=$(dirname "$library") ROCKSDB_STATIC=1
export CARGO_TARGET_DIR=${FUZZ_TARGET_DIR:-$HOME/.cache/idguard/fuzz-target}
mkdir -p "corpus/$target" artifacts
cargo +nightly fuzz run --fuzz-dir . "$target" "corpus/$target" -- \
    -max_total_time="$seconds" -max_len=512 -print_final_stats=1
