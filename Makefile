# liqonet: `make demo` and `make test` are the two entry points (see README.md).
CARGO ?= cargo
# nextest runs every test in its own process, so labs run side by side; cargo test works too.
TEST_RUNNER := $(shell $(CARGO) nextest --version >/dev/null 2>&1 && echo "nextest run --no-fail-fast" || echo "test --no-fail-fast")

.PHONY: all demo test deps build lint bench clean

all: build

deps:
	@./scripts/deps.sh

build:
	$(CARGO) build --release --bins

demo: deps build
	./target/release/liqonet-demo

# Unit tests, config tests, and the lab tests (need root); the lab tests twice, with
# segmentation offloads and without. The lab finds the debug binaries `cargo build --bins`
# leaves next to the test executables.
test: deps
	$(CARGO) build --bins
	$(CARGO) $(TEST_RUNNER)
	@echo "== the lab tests again, with segmentation offloads forced off"
	LIQONET_LAB_OFFLOAD=0 $(CARGO) $(TEST_RUNNER) -p liqonet-lab

lint:
	rustup component add rustfmt clippy >/dev/null 2>&1 || true
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# End to end (plain routing, liqonet, wireguard-go, boringtun-cli on one lab; results also in
# target/bench/e2e.json), then the engine's micro-benchmarks.
bench: deps build
	@test -x target/tools/bin/boringtun-cli || $(CARGO) install boringtun-cli --locked --root target/tools
	./target/release/liqonet-bench
	$(CARGO) bench -p liqonet-benches

clean:
	$(CARGO) clean
