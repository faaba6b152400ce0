#!/usr/bin/env bash
# Builds the Kubernetes lab's clusters from Go modules, into a cache outside the work tree, and
# prints the directory holding the binaries:
# - the control plane: kube-apiserver, kube-scheduler, kube-controller-manager and kubectl
#   (tests/controlplane/kubernetes), etcd and etcdctl (tests/controlplane/etcd);
# - the nodes: kubelet and kube-proxy (tests/controlplane/kubernetes), containerd, its runc shim
#   and ctr (tests/controlplane/containerd), runc with seccomp (tests/controlplane/runc, cgo), the
#   CNI plugins (tests/controlplane/cni-plugins, under cni/), and the pause binary compiled from
#   the source the kubernetes module ships (under pause/, with its image tag);
# - helm (tests/controlplane/helm), to test the chart in deploy/helm/.
# Each module pins its own go.mod/go.sum, so that none moves another's pins. A second run with the
# same pins is a no-op; the Go build cache makes a rebuild after a pin change take seconds per
# unchanged package. Test infrastructure only: the product is Rust and talks to Kubernetes
# through kube.
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
kube_bins=(kube-apiserver kube-scheduler kube-controller-manager kubectl kubelet kube-proxy)
node_bins=(containerd containerd-shim-runc-v2 ctr runc helm)
cni_bins=(bridge host-local loopback portmap)
built() {
  local b
  for b in "${kube_bins[@]}" etcd etcdctl "${node_bins[@]}"; do [[ -x $out/$b ]] || return 1; done
  for b in "${cni_bins[@]}"; do [[ -x $out/cni/$b ]] || return 1; done
  [[ -x $out/pause/pause && -s $out/pause/tag ]]
}
if built; then
  echo "$out"
  exit 0
fi
command -v pkg-config >/dev/null 2>&1 && pkg-config --exists libseccomp \
  || { echo "controlplane: runc needs libseccomp-dev and pkg-config (scripts/deps.sh installs them)" >&2; exit 1; }
mkdir -p "$out.tmp/cni" "$out.tmp/pause"
export GOFLAGS=-mod=readonly CGO_ENABLED=0
# Stamped as the release build stamps it: kubectl refuses to parse an unstamped server version,
# and nodes report the kubelet's.
pkg=k8s.io/component-base/version
ldflags="-s -w -X $pkg.gitVersion=$kube_version -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
build() { # dir package binary [ldflags] [go build flags...]
  local dir=$1 package=$2 binary=$3 flags=${4:-}
  shift 4 || shift $#
  echo "controlplane: building $binary ($dir)" >&2
  (cd "$src/$dir" && go build -trimpath "$@" -ldflags "$flags" -o "$out.tmp/$binary" "$package") >&2
}
for b in "${kube_bins[@]}"; do
  build kubernetes "k8s.io/kubernetes/cmd/$b" "$b" "$ldflags"
done
build etcd go.etcd.io/etcd/server/v3 etcd "-s -w"
build etcd go.etcd.io/etcd/etcdctl/v3 etcdctl "-s -w"
containerd_version=$(pin containerd github.com/containerd/containerd/v2)
for b in containerd containerd-shim-runc-v2 ctr; do
  build containerd "github.com/containerd/containerd/v2/cmd/$b" "$b" \
    "-s -w -X github.com/containerd/containerd/v2/version.Version=$containerd_version"
done
# runc refuses every pod that asks for the RuntimeDefault seccomp profile without libseccomp.
runc_version=$(pin runc github.com/opencontainers/runc)
CGO_ENABLED=1 build runc github.com/opencontainers/runc runc "-s -w -X main.version=${runc_version#v}" -tags seccomp
plugins_version=$(pin cni-plugins github.com/containernetworking/plugins)
for p in main/bridge ipam/host-local main/loopback meta/portmap; do
  build cni-plugins "github.com/containernetworking/plugins/plugins/$p" "cni/${p#*/}" \
    "-s -w -X github.com/containernetworking/plugins/pkg/utils/buildversion.BuildVersion=$plugins_version"
done
helm_version=$(pin helm helm.sh/helm/v4)
build helm helm.sh/helm/v4/cmd/helm helm "-s -w -X helm.sh/helm/v4/internal/version.version=$helm_version"
# The pause binary, as build/pause/Makefile compiles it, from the module's own source; its tag
# is the one that Makefile gives it (containerd's sandbox image is registry.k8s.io/pause:TAG).
kube_src=$(cd "$src/kubernetes" && go list -m -f '{{.Dir}}' k8s.io/kubernetes)
pause_tag=$(awk -F'[ ?=]+' '$1 == "TAG" {print $2; exit}' "$kube_src/build/pause/Makefile")
[[ -n $pause_tag ]] || { echo "controlplane: cannot read the pause tag from $kube_src/build/pause/Makefile" >&2; exit 1; }
echo "controlplane: compiling pause $pause_tag" >&2
gcc -Os -Wall -Werror -static -DVERSION="v$pause_tag-liqonet" -o "$out.tmp/pause/pause" "$kube_src/build/pause/linux/pause.c"
echo "$pause_tag" > "$out.tmp/pause/tag"
rm -rf "$out" && mv "$out.tmp" "$out"
echo "$out"
