#!/bin/sh
# Runs the go command on this client offline, in GOPATH mode, against the Go sources
# that Debian's golang-*-dev packages install under /usr/share/gocode/src:
#
#   clients/go/go.sh build ./...
#   clients/go/go.sh vet ./...
#   DISPATCH_TARGET=127.0.0.1:50051 clients/go/go.sh test ./...
#
# GOPATH is clients/go/.build/gopath (where src/dispatch.example/client links back to
# clients/go) followed by /usr/share/gocode; the build cache is clients/go/.build/cache
# (DISPATCH_GO_BUILD moves both). No module proxy, no network: GO111MODULE=off, GOPROXY=off.
set -eu

HERE=$(cd "$(dirname "$0")" && pwd -P)
BUILD=${DISPATCH_GO_BUILD:-$HERE/.build}
link=$BUILD/gopath/src/dispatch.example/client

mkdir -p "$BUILD/gopath/src/dispatch.example" "$BUILD/cache"
if [ "$(cd "$link" 2>/dev/null && pwd -P)" != "$HERE" ]; then
    rm -f "$link"
    # A concurrent run may have made the same link meanwhile.
    ln -s "$HERE" "$link" 2>/dev/null || [ "$(cd "$link" && pwd -P)" = "$HERE" ]
fi

GO111MODULE=off
GOPATH=$BUILD/gopath:/usr/share/gocode
GOCACHE=$BUILD/cache
GOPROXY=off
GOFLAGS=
export GO111MODULE GOPATH GOCACHE GOPROXY GOFLAGS

# The package paths come from the working directory inside GOPATH (./... works there).
cd "$link"
exec go "$@"
