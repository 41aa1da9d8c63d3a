# idguard: the two quick-start commands are `make run` and `make test`.

# Builds go outside the clone, so that a fresh clone (as CI makes) rebuilds incrementally
# instead of compiling RocksDB's C++ from scratch.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/idguard/target
# One profile for everything (run, tests, lints), so RocksDB is compiled once.
PROFILE := --release
# The binary is built as the tests build it: `cargo test` unifies the dev-dependencies' features
# into tonic and the crate, so a plain `cargo build` after it would compile them again (and the
# tests again after that). Building one way lets run, dist and test share every artifact.
BUILD := cargo test $(PROFILE) --no-run
BIN := $(CARGO_TARGET_DIR)/release/idguard
DIST := $(CARGO_TARGET_DIR)/dist

.PHONY: run test lint dist prereqs

## Serve on 127.0.0.1:50051 with the registry in ./data.
run: prereqs
	$(BUILD)
	$(BIN) serve

## The whole test suite: unit, property, gRPC integration and command-line tests, then the
## OpenTelemetry export test, which needs the optional `otel` feature.
test: prereqs
	cargo test $(PROFILE)
	cargo test $(PROFILE) --features otel --test otel

## Formatting and lints, as CI runs them.
lint: prereqs
	cargo fmt --check
	cargo clippy $(PROFILE) --all-targets -- -D warnings
	cargo clippy $(PROFILE) --all-targets --features otel -- -D warnings

## The binary to ship, stripped, in $(DIST): the build keeps line tables (for backtraces in
## tests) and RocksDB's debug info, most of its size. That goes to idguard.debug beside it,
## which gdb and perf find through the binary's debug link.
dist: prereqs
	$(BUILD)
	mkdir -p $(DIST)
	objcopy --only-keep-debug $(BIN) $(DIST)/idguard.debug
	objcopy --strip-debug --add-gnu-debuglink=$(DIST)/idguard.debug $(BIN) $(DIST)/idguard
	@ls -l $(DIST)/idguard $(DIST)/idguard.debug

prereqs:
	@.ci/prereqs
