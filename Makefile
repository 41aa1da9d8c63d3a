# idguard: the two quick-start commands are `make run` and `make test`.

# Builds go outside the clone, so that a fresh clone (as CI makes) rebuilds incrementally
# instead of compiling RocksDB's C++ from scratch.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/idguard/target
# One profile for everything (run, tests, lints), so RocksDB is compiled once.
PROFILE := --release

.PHONY: run test lint prereqs

## Serve on 127.0.0.1:50051 with the registry in ./data.
run: prereqs
	cargo run $(PROFILE) -- serve

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

prereqs:
	@.ci/prereqs
