#!/usr/bin/env bash
# Run every benchmark (each measures IMAGIO against a named peer in the same run) and
# collect the results in benchmarks/results/. Needs the real data (IMAGIO_DATA, default
# ../shared/data). Usage: bash scripts/bench.sh [margin|ablation|lungnav|planning|batch ...]
#
# The planning benchmark compares with nnU-Net's own predictor and needs the `export`
# extra (torch + nnunetv2); it is skipped with a message when torch is not installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q -e ".[test,bench]"
mkdir -p benchmarks/results
which=("$@")
[ ${#which[@]} -gt 0 ] || which=(margin ablation lungnav planning batch)
for b in "${which[@]}"; do
  echo "=== benchmarks/bench_$b.py"
  case "$b" in
    margin)   .venv/bin/python benchmarks/bench_margin.py --out benchmarks/results/bench_margin.json ;;
    ablation) .venv/bin/python benchmarks/bench_ablation.py --out benchmarks/results/bench_ablation.json ;;
    lungnav)  .venv/bin/python benchmarks/bench_lungnav.py --out benchmarks/results/bench_lungnav.json ;;
    batch)    .venv/bin/python benchmarks/bench_batch.py --out benchmarks/results/bench_batch.json ;;
    planning)
      if .venv/bin/python -c "import torch, nnunetv2" 2>/dev/null; then
        .venv/bin/python benchmarks/bench_planning.py --out benchmarks/results/bench_planning.json
      else
        echo "skipped: needs the export extra (pip install torch==2.13.0; see README 'Dependencies')"
      fi ;;
    *) echo "unknown benchmark $b" >&2; exit 2 ;;
  esac
done
