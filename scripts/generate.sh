#!/usr/bin/env bash
# Regenerates every committed stub from proto/ in one `buf generate` (buf.gen.yaml):
# Python (with .pyi) in jobqueue_grpc/gen, Go in clients/go/jobqueuev1, TypeScript in
# clients/typescript/src/gen. Needs the pinned plugins: .venv (make install), .tools/bin
# (make tools) and clients/typescript/node_modules (npm ci); `make generate` sees to all three.
# Generated Python imports say `jobqueue.v1`; they are rewritten to the package path
# `jobqueue_grpc.gen.jobqueue.v1` so the stubs live inside our one pip package.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
# Plugins: Python ones (protoc-gen-mypy, `python` for the grpc_tools adapter) sit beside the
# interpreter; Go ones in .tools/bin; protoc-gen-es in node_modules/.bin.
export PATH="$(dirname "$(command -v "$PY")"):$PWD/.tools/bin:$PWD/clients/typescript/node_modules/.bin:$PATH"
for plugin in protoc-gen-mypy protoc-gen-go protoc-gen-go-grpc protoc-gen-es; do
  command -v "$plugin" >/dev/null || { echo "generate.sh: $plugin not found; run make tools / npm ci" >&2; exit 1; }
done
out=jobqueue_grpc/gen
# buf.gen.yaml has `clean: true`: buf empties each output directory before writing.
"$(dirname "$(command -v "$PY")")/buf" generate
for d in "$out" "$out/jobqueue" "$out/jobqueue/v1"; do
  printf '"""Generated code: do not edit; run `make generate`."""\n' > "$d/__init__.py"
done
sed -i -E \
  -e 's/^from jobqueue\.v1 import/from jobqueue_grpc.gen.jobqueue.v1 import/' \
  -e 's/\bjobqueue\.v1\.([a-z_]+_pb2)\b/jobqueue_grpc.gen.jobqueue.v1.\1/g' \
  "$out"/jobqueue/v1/*.py "$out"/jobqueue/v1/*.pyi
touch "$out/py.typed"
