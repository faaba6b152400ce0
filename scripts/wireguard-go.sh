#!/usr/bin/env bash
# Builds wireguard-go (its binary is named `wireguard`) at the release pinned by
# tests/peers/wireguard-go/go.mod and go.sum, from the Go module proxy, into a cache outside the
# work tree. Prints the binary's path. A second run with the same pins is a no-op. Test
# infrastructure only: the peer `make bench` measures liqonet against. Debian's `wireguard-go`
# on the PATH is never used for it (it predates wireguard-go's TUN and UDP offloads).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
src=$root/tests/peers/wireguard-go
command -v go >/dev/null 2>&1 || { echo "wireguard-go: go not found (the bench's wireguard-go is built from its Go module)" >&2; exit 1; }
need=$(awk '$1 == "go" {print $2; exit}' "$src/go.mod")
have=$(go env GOVERSION | sed 's/^go//')
if [[ $(printf '%s\n%s\n' "$need" "$have" | sort -V | head -1) != "$need" ]]; then
  echo "wireguard-go: go $have is too old; wireguard-go needs Go >= $need (on PATH as \`go\`)" >&2
  exit 1
fi

version=$(awk '$1 == "require" && $2 == "golang.zx2c4.com/wireguard" {print $3; exit}' "$src/go.mod")
[[ -n $version ]] || { echo "wireguard-go: cannot read the golang.zx2c4.com/wireguard pin from $src/go.mod" >&2; exit 1; }
# The pins' hash names the build, so a changed go.sum builds anew beside the old one.
pins=$(cat "$src/go.mod" "$src/go.sum" | sha256sum | cut -c1-12)
out=${LIQONET_WIREGUARD_GO_CACHE:-/var/cache/liqonet/wireguard-go}/$version-$pins
if [[ -x $out/wireguard ]]; then
  echo "$out/wireguard"
  exit 0
fi
mkdir -p "$out.tmp"
echo "wireguard-go: building golang.zx2c4.com/wireguard $version" >&2
# As wireguard-go's own Makefile builds it, without cgo (it needs none).
(cd "$src" && GOFLAGS=-mod=readonly CGO_ENABLED=0 go build -trimpath -o "$out.tmp/wireguard" golang.zx2c4.com/wireguard) >&2
rm -rf "$out" && mv "$out.tmp" "$out"
echo "$out/wireguard"
