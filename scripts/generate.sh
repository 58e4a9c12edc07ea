#!/usr/bin/env bash
# Regenerates the committed Python stubs (with .pyi) from proto/.
# Generated imports say `jobqueue.v1`; they are rewritten to the package path
# `jobqueue_grpc.gen.jobqueue.v1` so the stubs live inside our one pip package.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
# protoc plugins (protoc-gen-mypy) sit beside the interpreter.
export PATH="$(dirname "$(command -v "$PY")"):$PATH"
out=jobqueue_grpc/gen
rm -rf "$out"
mkdir -p "$out/jobqueue/v1"
"$PY" -m grpc_tools.protoc -Iproto \
  --python_out="$out" --grpc_python_out="$out" \
  --mypy_out="$out" --mypy_grpc_out="$out" \
  proto/jobqueue/v1/*.proto
for d in "$out" "$out/jobqueue" "$out/jobqueue/v1"; do
  printf '"""Generated code: do not edit; run `make generate`."""\n' > "$d/__init__.py"
done
sed -i -E \
  -e 's/^from jobqueue\.v1 import/from jobqueue_grpc.gen.jobqueue.v1 import/' \
  -e 's/\bjobqueue\.v1\.([a-z_]+_pb2)\b/jobqueue_grpc.gen.jobqueue.v1.\1/g' \
  "$out"/jobqueue/v1/*.py "$out"/jobqueue/v1/*.pyi
touch "$out/py.typed"
