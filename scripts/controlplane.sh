#!/usr/bin/env bash
# Builds the Kubernetes lab's control plane from Go modules: kube-apiserver and kubectl
# (tests/controlplane/kubernetes) and etcd and etcdctl (tests/controlplane/etcd), pinned by
# their go.mod/go.sum, into a cache outside the work tree. Prints the directory holding the
# binaries. A second run with the same pins is a no-op; the Go build cache makes a rebuild
# after a pin change take seconds per unchanged package. Test infrastructure only: the product
# is Rust and talks to Kubernetes through kube.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
src=$root/tests/controlplane
command -v go >/dev/null 2>&1 || { echo "controlplane: go not found (Go >= 1.26 builds the lab's control plane)" >&2; exit 1; }
# The modules need the Go their go.mod names; Debian's golang-go is older.
need=$(awk '$1 == "go" {print $2; exit}' "$src/kubernetes/go.mod")
have=$(go env GOVERSION | sed 's/^go//')
if [[ $(printf '%s\n%s\n' "$need" "$have" | sort -V | head -1) != "$need" ]]; then
  echo "controlplane: go $have is too old; the lab's control plane needs Go >= $need (on PATH as \`go\`)" >&2
  exit 1
fi

pin() { awk -v m="$2" '$1 == m && $2 ~ /^v/ {print $2; exit}' "$src/$1/go.mod"; }
kube_version=$(pin kubernetes k8s.io/kubernetes)
etcd_version=$(pin etcd go.etcd.io/etcd/server/v3)
[[ $kube_version =~ ^v([0-9]+)\.([0-9]+)\.[0-9]+$ ]] || { echo "controlplane: cannot read the k8s.io/kubernetes pin from $src/kubernetes/go.mod" >&2; exit 1; }
major=${BASH_REMATCH[1]} minor=${BASH_REMATCH[2]}
[[ -n $etcd_version ]] || { echo "controlplane: cannot read the etcd pin from $src/etcd/go.mod" >&2; exit 1; }

# The pins' hash names the build, so a changed go.sum builds anew beside the old one.
pins=$(cat "$src"/*/go.mod "$src"/*/go.sum | sha256sum | cut -c1-12)
out=${LIQONET_CONTROLPLANE_CACHE:-/var/cache/liqonet/controlplane}/$kube_version-etcd-$etcd_version-$pins
if [[ -x $out/kube-apiserver && -x $out/kubectl && -x $out/etcd && -x $out/etcdctl ]]; then
  echo "$out"
  exit 0
fi
mkdir -p "$out.tmp"
export GOFLAGS=-mod=readonly CGO_ENABLED=0
# Stamped as the release build stamps it: kubectl refuses to parse an unstamped server version.
pkg=k8s.io/component-base/version
ldflags="-s -w -X $pkg.gitVersion=$kube_version -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
build() { # dir package binary [ldflags]
  echo "controlplane: building $3 ($1)" >&2
  (cd "$src/$1" && go build -trimpath -ldflags "$4" -o "$out.tmp/$3" "$2") >&2
}
build kubernetes k8s.io/kubernetes/cmd/kube-apiserver kube-apiserver "$ldflags"
build kubernetes k8s.io/kubernetes/cmd/kubectl kubectl "$ldflags"
build etcd go.etcd.io/etcd/server/v3 etcd "-s -w"
build etcd go.etcd.io/etcd/etcdctl/v3 etcdctl "-s -w"
rm -rf "$out" && mv "$out.tmp" "$out"
echo "$out"
