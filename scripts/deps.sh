#!/usr/bin/env bash
# Installs what the demo, the lab and the tests run: Debian packages for the tools, and checks
# the kernel features the lab needs. Idempotent; runs `apt-get update` only when installing.
set -euo pipefail

declare -A pkg_of=(
  [ip]=iproute2 [ping]=iputils-ping [curl]=curl [iperf3]=iperf3 [python3]=python3
  [wireguard-go]=wireguard-go [wg]=wireguard-tools [nft]=nftables [sysctl]=procps [kill]=procps
  [conntrack]=conntrack [openssl]=openssl [unshare]=util-linux
)
missing=()
for cmd in "${!pkg_of[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${pkg_of[$cmd]}")
done
# What the lab's nodes are built with (scripts/controlplane.sh): runc needs cgo and libseccomp,
# the pause binary a static libc. Their images: Debian's static busybox for the test pods.
for pkg in gcc pkg-config libseccomp-dev libc6-dev busybox-static; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  if [[ $(id -u) != 0 ]]; then
    echo "deps: missing ${missing[*]}; run as root to install them" >&2
    exit 1
  fi
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  echo "deps: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Offline validation of the Kubernetes manifests in deploy/ (PyPI).
if ! command -v kubernetes-validate >/dev/null 2>&1; then
  echo "deps: installing kubernetes-validate (PyPI)"
  python3 -m pip install --quiet --disable-pip-version-check kubernetes-validate 2>&1 | grep -v "Running pip as the 'root' user" || true
  command -v kubernetes-validate >/dev/null 2>&1 || { echo "deps: kubernetes-validate did not install" >&2; exit 1; }
fi
# The metrics tests parse the exposition with the Prometheus project's own parser (PyPI).
if ! python3 -c 'import prometheus_client' >/dev/null 2>&1; then
  echo "deps: installing prometheus-client (PyPI)"
  python3 -m pip install --quiet --disable-pip-version-check prometheus-client 2>&1 | grep -v "Running pip as the 'root' user" || true
  python3 -c 'import prometheus_client' >/dev/null 2>&1 || { echo "deps: prometheus-client did not install" >&2; exit 1; }
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "deps: cargo not found; install Rust with rustup (https://rustup.rs)" >&2
  exit 1
fi
if [[ ! -c /dev/net/tun ]]; then
  mkdir -p /dev/net && mknod /dev/net/tun c 10 200 && chmod 0666 /dev/net/tun
fi
