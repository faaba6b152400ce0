# liqonet: `make demo` and `make test` are the two entry points (see README.md).
CARGO ?= cargo
# nextest runs every test in its own process, so labs run side by side; cargo test works too.
TEST_RUNNER := $(shell $(CARGO) nextest --version >/dev/null 2>&1 && echo "nextest run --no-fail-fast" || echo "test --no-fail-fast")
# Lab tests that measure outages and throughput are `#[ignore]`d in the ordinary passes and run
# alone, one at a time: `$(call alone,FILE)`.
alone = $(shell $(CARGO) nextest --version >/dev/null 2>&1 \
	&& echo "nextest run -p liqonet-lab --test $(1) --run-ignored ignored-only --test-threads 1 --no-capture" \
	|| echo "test -p liqonet-lab --test $(1) -- --ignored --test-threads=1 --nocapture")

.PHONY: all demo kube-demo kube-demo-down test deps controlplane peers image build lint bench clean

all: build

deps:
	@./scripts/deps.sh

# The Kubernetes lab's clusters (control plane, kubectl, kubelet, kube-proxy, containerd, runc,
# CNI plugins, pause) and helm from pinned Go modules, into a cache outside the work tree; a no-op once
# built.
controlplane:
	@./scripts/controlplane.sh >/dev/null

build:
	$(CARGO) build --release --bins

# The project's image and the test pods' image, built offline (no registry, no base image) from
# the release binaries as OCI layout archives in target/image/, for `ctr images import`.
image: build
	./target/release/liqonet-image

# The stock WireGuard peers the tests and the bench run beside liqonet: wireguard-go at the pinned
# release (built from its Go module into a cache outside the work tree) and boringtun-cli (into
# target/tools). A no-op once built.
peers:
	@./scripts/wireguard-go.sh >/dev/null
	@test -x target/tools/bin/boringtun-cli || $(CARGO) install -q boringtun-cli --locked --root target/tools

demo: deps build
	./target/release/liqonet-demo

# Two clusters on real nodes, installed from deploy/, left running for kubectl.
kube-demo: deps controlplane
	$(CARGO) build --bins
	./target/debug/liqonet-kube-demo up

kube-demo-down:
	@test -x target/debug/liqonet-kube-demo || $(CARGO) build --bins
	./target/debug/liqonet-kube-demo down

# Unit tests, config tests, and the lab tests (need root); the lab tests twice, with
# segmentation offloads and without; then the hardening and Kubernetes lab tests once, one at
# a time (the first measure outages, each of the others runs two control planes). The lab finds
# the debug binaries next to the test executables.
test: deps
	@# The control plane's Go build overlaps the Rust build (each leaves a core idle at times).
	@# `cargo test --no-run` builds the binaries too, with the tests' feature set, so nothing
	@# is compiled twice.
	@mkdir -p target; { ./scripts/controlplane.sh && $(MAKE) -s peers; } > target/controlplane.log 2>&1 & cp=$$!; \
	$(CARGO) test --no-run; built=$$?; \
	wait $$cp || { cat target/controlplane.log; echo "the lab's control plane or its WireGuard peers did not build" >&2; exit 1; }; \
	exit $$built
	$(CARGO) $(TEST_RUNNER)
	$(CARGO) run -q -p liqonet-fuzz -- --inputs 20000 --time-limit 8 --allow-known
	@echo "== the lab tests again, with segmentation offloads forced off"
	LIQONET_LAB_OFFLOAD=0 $(CARGO) $(TEST_RUNNER) -p liqonet-lab
	@echo "== attacks, restarts and reloads under traffic, one at a time (they measure outages)"
	$(CARGO) $(call alone,hardening)
	@echo "== first contact: the first packet's wait after a lost initiation, one at a time"
	$(CARGO) $(call alone,first_contact)
	@echo "== the Kubernetes lab (real control planes; kubelet, containerd, kube-proxy on every node), one at a time"
	$(CARGO) $(call alone,kube)
	$(CARGO) $(call alone,kube_nodes)

lint:
	rustup component add rustfmt clippy >/dev/null 2>&1 || true
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# End to end (plain routing, liqonet, wireguard-go 0.0.20250522 built from its Go module, Debian's
# 2022 wireguard-go and boringtun-cli, each on its own lab; results also in
# target/bench/e2e.json), gateway failovers on the Kubernetes lab, a handshake flood, scale
# (peers on one gateway, networks on a route agent, nodes on one API server), the engine's
# micro-benchmarks, and last the end-to-end table again beside the engine's figures. If
# wireguard-go does not build, the bench says so and measures the others.
bench: deps controlplane build
	$(CARGO) build --release -p liqonet-benches --bin liqonet-relay
	@test -x target/tools/bin/boringtun-cli || $(CARGO) install boringtun-cli --locked --root target/tools
	@mkdir -p target/bench
	@./scripts/wireguard-go.sh > target/bench/wireguard-go.path 2> target/bench/wireguard-go.log \
		|| { cat target/bench/wireguard-go.log; echo "wireguard-go did not build: the bench measures the others"; : > target/bench/wireguard-go.path; }
	LIQONET_WIREGUARD_GO="$$(cat target/bench/wireguard-go.path)" ./target/release/liqonet-bench
	./target/release/liqonet-bench failover
	./target/release/liqonet-bench flood
	./target/release/liqonet-bench scale
	$(CARGO) bench -p liqonet-benches
	./target/release/liqonet-bench report

# Structure-aware fuzzing on stable Rust (fuzz/): every target for FUZZ_INPUTS inputs, built with
# the `fuzzing` profile (release speed, overflow checks in our crates); the HTTP target costs
# milliseconds an input, so it gets about two minutes. A crash is printed with its seed and input
# and saved under target/fuzz/crashes; any crash fails the run.
FUZZ_INPUTS ?= 10M
.PHONY: fuzz
fuzz:
	$(CARGO) build --profile fuzzing -p liqonet-fuzz
	./target/fuzzing/liqonet-fuzz --inputs $(FUZZ_INPUTS) ip_packets icmp_errors engine_from_network engine_from_tun gro_writes gateway_config agent_config; a=$$?; \
	./target/fuzzing/liqonet-fuzz --inputs $(FUZZ_INPUTS) --time-limit 120 http_requests; b=$$?; \
	test $$a -eq 0 && test $$b -eq 0

clean:
	$(CARGO) clean
