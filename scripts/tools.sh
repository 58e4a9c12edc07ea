#!/usr/bin/env bash
# Installs the pinned Go tools into .tools/bin (gitignored): the protoc plugins that
# `make generate` runs, and the third-party operator tools that tests/test_clients.py drives.
# Safe to re-run: `go install` of an already-built version is a no-op.
set -euo pipefail
cd "$(dirname "$0")/.."
# One place for the pins. protoc-gen-go's version must match the google.golang.org/protobuf
# in clients/go/go.mod closely enough for the generated code to compile (checked by `go test`).
TOOLS=(
  google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
  google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.6.1
  github.com/fullstorydev/grpcurl/cmd/grpcurl@v1.9.3
  github.com/grpc-ecosystem/grpc-health-probe@v0.4.61
)
if ! command -v go >/dev/null 2>&1; then
  echo "tools.sh: go not found; Go tools not installed (Go client and grpcurl tests will skip)" >&2
  exit 1
fi
export GOBIN="$PWD/.tools/bin"
export GOFLAGS="${GOFLAGS:-} -trimpath"
mkdir -p "$GOBIN"
echo "tools.sh: building ${#TOOLS[@]} pinned Go tools into .tools/bin; the first run downloads" \
  "~420 MB of Go modules into $(go env GOMODCACHE) and takes minutes, later runs are quick"
for t in "${TOOLS[@]}"; do
  echo "go install $t"
  go install "$t"
done
