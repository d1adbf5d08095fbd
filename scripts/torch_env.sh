#!/usr/bin/env bash
# The PyTorch target's environment (make torch-env): CPython 3.12 + torch + transformers, cached in
# ${PRISM_CACHE:-~/.cache/prismkit}/torch-py312. Idempotent: a second run takes a second.
# 3.12, not prismkit's own 3.11: exact function boundaries (sys.monitoring) need 3.12+. The only torch
# for 3.12 here is PyPI's (CUDA build, ~5 GB with its CUDA packages; it runs on the CPU); the CPU-only
# wheel on this machine is for 3.11.
set -euo pipefail
CACHE="${PRISM_CACHE:-$HOME/.cache/prismkit}"
ENV="$CACHE/torch-py312"
TORCH=torch==2.13.0
TRANSFORMERS=transformers==5.23.0
if [ -x "$ENV/bin/python" ] && "$ENV/bin/python" -c "import torch, transformers" 2>/dev/null; then
  echo "$ENV/bin/python"; exit 0
fi
PY=""
for c in "$(ls -d "$HOME"/.pyenv/versions/3.12.*/bin/python3.12 2>/dev/null | sort -V | tail -1)" "$(command -v python3.12 || true)"; do
  [ -n "$c" ] && [ -x "$c" ] && { PY="$c"; break; }
done
[ -n "$PY" ] || { echo "torch-env: no python3.12 (pyenv install 3.12, or apt-get install python3.12)" >&2; exit 1; }
echo "[torch-env] $PY -> $ENV ($TORCH $TRANSFORMERS, several GB, a few minutes once)" >&2
rm -rf "$ENV"
"$PY" -m venv "$ENV"
"$ENV/bin/pip" install -q --progress-bar off "$TORCH" "$TRANSFORMERS" >&2
"$ENV/bin/python" -c "import torch, transformers" && echo "$ENV/bin/python"
