#!/usr/bin/env bash
# The one prepared GPU benchmark run: FLUX.1-dev's transformer shape (random bf16 weights, no
# download) at 1024x1024, 28 steps, on one card: the direct call, the server on one rank, then
# the server with first-block cache, fp8 and compile (benchmarks/gpu.py). Prints the card and a
# table, writes gpu-<UTC time>.json and .log; the whole run (install included) stops at 8 minutes.
#
#   benchmarks/gpu.sh [--out DIR]            the run (DIR: where the JSON and log go; benchmarks/results)
#   benchmarks/gpu.sh --dry-run [--out DIR]  the same code on tiny Flux, 64x64, 4 steps (CPU without CUDA)
#   benchmarks/gpu.sh --quick ...            2 timed jobs per config instead of 3
#   benchmarks/gpu.sh --fetch-wheels         here, with network: .whl/ for a machine without one (below)
#
# Installed (a machine with network): `make .venv/.installed TORCH=torch` (as `make test` does, with
# a CUDA torch) and `.venv/bin/pip install torchao` for the fp8 row; the script runs .venv/bin/python
# ($PYTHON overrides; without .venv: python3).
# A machine with a CUDA torch but no network: run `benchmarks/gpu.sh --fetch-wheels` here first
# (~35 MiB of wheels in .whl/, ignored by git: `echo /.whl/ >> .git/info/exclude`), take .whl/ along
# with the tree, and the script installs them beside that machine's torch before the run.
#
# Environment: GPU_BENCH_LIMIT (seconds for the whole run, 480), GPU_WHEELS_PYTHON (3.12) and
# GPU_WHEELS_ALSO (torchao) for --fetch-wheels; PARA_ATTN_BENCH_FLUX_PATH and the others that
# benchmarks/gpu.py reads.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS
limit=${GPU_BENCH_LIMIT:-480}
out=benchmarks/results
tag=gpu
fetch=
quick=()
while [ $# -gt 0 ]; do
  case $1 in
    --dry-run) export PARA_ATTN_BENCH_GPU_SHAPE=tiny; tag=gpu-dry-run ;;
    --out) out=${2:?--out needs a directory}; shift ;;
    --quick) quick=(--quick) ;;
    --fetch-wheels) fetch=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
python=${PYTHON:-.venv/bin/python}
[ -x "$python" ] || python=python3

if [ -n "$fetch" ]; then
  also=()
  for requirement in ${GPU_WHEELS_ALSO-torchao}; do also+=(--also "$requirement"); done
  exec "$python" -m benchmarks.gpu_wheels .whl --python-version "${GPU_WHEELS_PYTHON:-3.12}" ${also[@]+"${also[@]}"}
fi

# A machine with torch but without this project and its dependencies: the carried wheels,
# installed apart (pip --target) and put first on the path; the project's code comes from
# this tree (the wheels only register its plugins), so it is the code as it is now.
if ! "$python" -c 'import para_attn_server' 2>/dev/null && compgen -G '.whl/*.whl' >/dev/null; then
  site=${GPU_BENCH_SITE:-/tmp/para-attn-site}
  torch=$("$python" -c 'import torch; print("torch", torch.__version__)' 2>/dev/null || echo "no torch")
  echo "installing .whl/ into $site, for $("$python" --version 2>&1) with $torch"
  "$python" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$site" .whl/*.whl
  export PYTHONPATH=$PWD/core:$PWD/core/client:$PWD/plugins:$PWD/contrib_predictors:$site${PYTHONPATH:+:$PYTHONPATH}
  "$python" -m pip check || true  # names what the machine lacks, if anything
fi

if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
else
  echo "nvidia-smi: not found"
fi
mkdir -p "$out"
name=$out/$tag-$(date -u +%Y%m%dT%H%M%SZ)
left=$((limit - (SECONDS - started)))
# The suite stops in time to print its table and write the JSON: 45 s before the limit.
margin=$((left / 4 < 45 ? left / 4 : 45))
export PARA_ATTN_BENCH_GPU_BUDGET=${PARA_ATTN_BENCH_GPU_BUDGET:-$((left - margin))}
export PYTHONUNBUFFERED=1
rc=0
timeout --kill-after=20 "$left" "$python" -m benchmarks --only gpu ${quick[@]+"${quick[@]}"} --json "$name.json" 2>&1 | tee "$name.log" || rc=$?
[ "$rc" = 124 ] && echo "gpu.sh: stopped at the ${limit} s limit (the log has the rows measured)" >&2
[ -e "$name.json" ] || name_json="no JSON: stopped before the end"
echo "gpu.sh: ${name_json:-$name.json}, $name.log ($((SECONDS - started)) s, exit $rc)"
exit "$rc"
