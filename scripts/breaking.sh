#!/usr/bin/env bash
# `buf breaking`: proto/ must stay wire- and source-compatible with the previous commit
# (buf.yaml's FILE rules), so the contract never breaks by accident. Works in a shallow clone.
set -euo pipefail
cd "$(dirname "$0")/.."
BUF=${BUF:-buf}
against=${1:-HEAD~1}
if ! git rev-parse -q --verify "$against^{commit}" >/dev/null; then
  # A shallow CI clone has no parent; fetch one more commit if there is a remote.
  git fetch -q --deepen=1 2>/dev/null || true
fi
if ! git rev-parse -q --verify "$against^{commit}" >/dev/null; then
  echo "breaking.sh: no commit $against to compare against (first commit?); nothing to check"
  exit 0
fi
echo "buf breaking --against .git#ref=$against"
"$BUF" breaking --against ".git#ref=$against"
