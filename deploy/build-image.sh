#!/usr/bin/env bash
# Builds the sweeper image without a registry: the static binary is built on
# this machine and copied, with the CA bundle and a passwd naming the
# non-root user, into a scratch image (deploy/Containerfile).
#
#   deploy/build-image.sh            # image tasker-sweeper:$VERSION (+ :latest)
#   IMAGE=registry.example/sweeper:1.2.3 deploy/build-image.sh
#
# Environment: VERSION (default: git describe), IMAGE, ENGINE (podman or
# docker; default podman, else a docker whose daemon answers), CA_BUNDLE.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
cd "$root"

export GOTOOLCHAIN=local
export CONTAINERS_CONF=${CONTAINERS_CONF:-$here/containers.conf}

VERSION=${VERSION:-$(git describe --tags --always --dirty 2>/dev/null || echo dev)}
REVISION=${REVISION:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}
IMAGE=${IMAGE:-tasker-sweeper:$VERSION}
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}

engine() {
	if [[ -n ${ENGINE:-} ]]; then
		echo "$ENGINE"
	elif command -v podman >/dev/null; then
		echo podman
	elif command -v docker >/dev/null && docker info >/dev/null 2>&1; then
		echo docker
	else
		echo "build-image: neither podman nor a running docker (apt-get install podman runc)" >&2
		return 1
	fi
}
ENGINE=$(engine)

# ldvar NAME prints the linker symbol of a package-level string variable
# NAME declared in cmd/ or internal/ (main.NAME for the main package), or
# nothing when the binary has none: -X is only passed for a variable that
# exists.
ldvar() {
	local file dir pkg
	file=$(grep -rlE --include='*.go' \
		"^var $1( string)?( =|$)|^[[:space:]]+$1( string)?[[:space:]]*= \"" cmd internal 2>/dev/null |
		grep -v '_test\.go$' | head -n1) || true
	[[ -n $file ]] || return 0
	dir=$(dirname "$file")
	pkg=$(go list -f '{{if eq .Name "main"}}main{{else}}{{.ImportPath}}{{end}}' "./$dir")
	echo "$pkg.$1"
}

ldflags="-s -w"
for var in version revision; do
	value=$VERSION
	[[ $var == revision ]] && value=$REVISION
	sym=$(ldvar "$var")
	[[ -n $sym ]] || sym=$(ldvar "${var^}")
	if [[ -n $sym ]]; then
		ldflags+=" -X $sym=$value"
	fi
done

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT

echo "build-image: go build (ldflags: $ldflags)" >&2
# timetzdata: scratch has no /usr/share/zoneinfo, and a CRON_TZ= schedule
# needs the zone database.
CGO_ENABLED=0 go build -trimpath -tags timetzdata -ldflags "$ldflags" -o "$ctx/sweeper" ./cmd/sweeper
cp "$CA_BUNDLE" "$ctx/ca-certificates.crt"
cp "$here/image/passwd" "$here/image/group" "$ctx/"

echo "build-image: $ENGINE build -t $IMAGE" >&2
# --no-cache: the layer cache would keep a previous build's labels (the
# version) when only the build arguments changed; there is nothing slow to
# cache in an image of four COPYs.
"$ENGINE" build --quiet --no-cache -f "$here/Containerfile" \
	--build-arg "VERSION=$VERSION" --build-arg "REVISION=$REVISION" \
	-t "$IMAGE" -t "tasker-sweeper:latest" "$ctx" >/dev/null
size=$("$ENGINE" image inspect --format '{{.Size}}' "$IMAGE")
echo "build-image: $IMAGE, $((size / 1024 / 1024)) MiB ($size bytes)" >&2
echo "$IMAGE"
