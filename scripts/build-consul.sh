#!/usr/bin/env bash
# Builds a Consul binary from its Go module at a pinned release and caches it per machine.
#   scripts/build-consul.sh [version]     prints the path of the binary on stdout
# Consul's go.mod has replace directives, so `go install pkg@version` refuses it:
# it is built here as a dependency of a throwaway module instead.
set -euo pipefail
version="${1:-${CONSUL_VERSION:-1.22.2}}"
version="${version#v}"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/etcd-consul-migrate/consul/$version"
bin="$cache/consul"
if [ -x "$bin" ]; then echo "$bin"; exit 0; fi
if ! command -v go >/dev/null 2>&1; then
  echo "build-consul: Go is not installed; install Go (https://go.dev/dl) or set CONSUL_BIN to a consul binary" >&2
  exit 1
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
echo "build-consul: building consul v$version with $(go version) (once per machine, a few minutes)" >&2
go mod init consul-build >/dev/null 2>&1
# The checksum database mirror here lacks some of Consul's own submodules (proto-public);
# the module proxy still serves them, so skip the sumdb for Consul's modules only.
export GONOSUMDB="${GONOSUMDB:+$GONOSUMDB,}github.com/hashicorp/consul"
if ! { GOFLAGS=-mod=mod go get "github.com/hashicorp/consul@v$version" >&2 && CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -o "$work/consul" github.com/hashicorp/consul >&2; }; then
  # Seen for 1.15-1.18: their go.mod points the sub-modules (api, proto-public, troubleshoot, ...) at folders of
  # Consul's repository, which a dependency's replace lines cannot reach, and the published versions it requires
  # are older than its code needs.
  # Seen for 1.21.5: the module proxy refuses (403) sub-module versions it requires (envoyextensions, troubleshoot).
  echo "build-consul: Consul v$version does not build from its Go module with $(go version) (errors above). Some releases" \
    "(1.15-1.18) need sub-modules newer than their go.mod requires; for others (1.21.5) the module proxy does not serve" \
    "a sub-module version they require (\"403 Forbidden\" above). Use a consul v$version binary instead:" \
    "CONSUL_VERSION=$version CONSUL_BIN=/path/to/consul" >&2
  exit 1
fi
"$work/consul" version >&2
mkdir -p "$cache"
mv "$work/consul" "$bin"
echo "$bin"
