#!/usr/bin/env bash
# The GPU numbers in one go (about 12 minutes on an H200; STEPS runs a part of them): scripts/bench.py gpu on
# ViT-B/16 + SSF, synthetic data in VTAB-1k's sizes, random-init weights (no dataset, no download).
#   compile: (a) cifar at COMPILE_EPOCHS epochs eager and with each of COMPILE: the fastest mode is used below
#   single:  (a) cifar, 100 epochs, train.py end to end, and its training loop against the bare timm loop
#   table:   (b) the first SEARCH_TASKS tasks at TABLE_EPOCHS epochs with each of RUNS runs at once (no search when
#            RUNS is one number), then the whole 19-task table with the best of them, projected to 100 epochs
#   ssf:     (c) only with SSF_REPO (a dongzelian/SSF checkout) and SSF_PYTHONPATH (a folder holding timm 0.6.5, which
#            SSF's code needs): the official SSF train.py against train.py on cifar at SSF_EPOCHS epochs
# Needs python3 with torch and timm (the machine's), and hydra-core, omegaconf, antlr4-python3-runtime and
# hydra-joblib-launcher on PYTHONPATH (set by the caller). Numbers and the log go to $OUT (default /tmp/gpu_check);
# a later call with other STEPS reads the compile mode chosen by an earlier one from $OUT/compile.json (or MODE).
# BENCH_ARGS are added to every bench (on a CPU, to try the script: BENCH_ARGS="--backbone vit_test --epochs 2").
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 WANDB_MODE=disabled HF_HUB_OFFLINE=1
OUT=${OUT:-/tmp/gpu_check}
STEPS=${STEPS:-compile single table ssf}
COMPILE=${COMPILE:-default reduce-overhead}
COMPILE_EPOCHS=${COMPILE_EPOCHS:-20}
TABLE_EPOCHS=${TABLE_EPOCHS:-10}
SEARCH_TASKS=${SEARCH_TASKS:-4}
RUNS=${RUNS:-4 8}  # 4 was the best of 1, 2 and 4 eager on the H200
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu_check.log") 2>&1

! command -v nvidia-smi >/dev/null || nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, timm, hydra, omegaconf, hydra_plugins.hydra_joblib_launcher; \
print('torch', torch.__version__, 'timm', timm.__version__, 'hydra', hydra.__version__)"
# shellcheck disable=SC2086
bench() { echo "+ scripts/bench.py gpu $* ${BENCH_ARGS:-}"; SECONDS=0; python3 scripts/bench.py gpu "$@" ${BENCH_ARGS:-}
          echo "($SECONDS s)"; }
field() { python3 -c "import json, sys; print(json.load(open(sys.argv[1]))$2)" "$1"; }
step() { [[ " $STEPS " == *" $1 "* ]]; }

if step compile; then
  # shellcheck disable=SC2086
  bench --parts a --epochs "$COMPILE_EPOCHS" --compile none $COMPILE --out "$OUT/compile.json"
fi
MODE=${MODE:-$( [[ -f "$OUT/compile.json" ]] && field "$OUT/compile.json" "['best_single']['compile']" || echo none)}
echo "compile=$MODE"
if step single; then
  bench --parts a --compile "$MODE" --out "$OUT/a.json"
fi
if step table; then
  read -ra runs <<< "$RUNS"
  best=${runs[0]}
  if (( ${#runs[@]} > 1 )); then
    bench --parts b --compile "$MODE" --tasks "$SEARCH_TASKS" --table-epochs "$TABLE_EPOCHS" --runs-per-gpu "${runs[@]}" \
      --out "$OUT/search.json"
    best=$(field "$OUT/search.json" "['best']['runs_at_once']")
  fi
  bench --parts b --compile "$MODE" --table-epochs "$TABLE_EPOCHS" --runs-per-gpu "$best" --out "$OUT/table.json"
fi
if step ssf && [[ -n "${SSF_REPO:-}" ]]; then
  bench --parts a c --compile "$MODE" --epochs "${SSF_EPOCHS:-10}" --ssf-repo "$SSF_REPO" \
    --ssf-python "env PYTHONPATH=${SSF_PYTHONPATH:?a folder holding timm 0.6.5} python3" --out "$OUT/ssf.json"
fi
