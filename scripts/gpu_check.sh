#!/usr/bin/env bash
# The GPU numbers in one go (about 6 minutes on an H200): scripts/bench.py gpu on ViT-B/16 + SSF, synthetic data in
# VTAB-1k's sizes, random-init weights (no dataset, no download).
#   1. (a) cifar, 100 epochs, train.py end to end, and its training loop against the bare timm loop
#   2. (b) the first SEARCH_TASKS tasks at TABLE_EPOCHS epochs with each of RUNS runs at once: the best runs per GPU
#   3. (b) the whole 19-task table at TABLE_EPOCHS epochs with that many at once, projected to 100 epochs
#   4. (c) only with SSF_REPO (a dongzelian/SSF checkout) and SSF_PYTHONPATH (a folder holding timm 0.6.5, which SSF's
#      code needs): the official SSF train.py against train.py on cifar at SSF_EPOCHS epochs
# Needs python3 with torch and timm (the machine's), and hydra-core, omegaconf, antlr4-python3-runtime and
# hydra-joblib-launcher on PYTHONPATH (set by the caller). Numbers and the log go to $OUT (default /tmp/gpu_check).
# BENCH_ARGS are added to every bench (on a CPU, to try the script: BENCH_ARGS="--backbone vit_test --epochs 2").
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 WANDB_MODE=disabled HF_HUB_OFFLINE=1
OUT=${OUT:-/tmp/gpu_check}
TABLE_EPOCHS=${TABLE_EPOCHS:-10}
SEARCH_TASKS=${SEARCH_TASKS:-4}
RUNS=${RUNS:-1 2 4}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1

! command -v nvidia-smi >/dev/null || nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, timm, hydra, omegaconf, hydra_plugins.hydra_joblib_launcher; \
print('torch', torch.__version__, 'timm', timm.__version__, 'hydra', hydra.__version__)"
# shellcheck disable=SC2086
bench() { echo "+ scripts/bench.py gpu $* ${BENCH_ARGS:-}"; SECONDS=0; python3 scripts/bench.py gpu "$@" ${BENCH_ARGS:-}
          echo "($SECONDS s)"; }

bench --parts a --out "$OUT/a.json"
# shellcheck disable=SC2086
bench --parts b --tasks "$SEARCH_TASKS" --table-epochs "$TABLE_EPOCHS" --runs-per-gpu $RUNS --out "$OUT/search.json"
best=$(python3 -c "import json, sys; print(json.load(open(sys.argv[1]))['best']['runs_at_once'])" "$OUT/search.json")
bench --parts b --table-epochs "$TABLE_EPOCHS" --runs-per-gpu "$best" --out "$OUT/table.json"
if [[ -n "${SSF_REPO:-}" ]]; then
  bench --parts a c --epochs "${SSF_EPOCHS:-10}" --ssf-repo "$SSF_REPO" \
    --ssf-python "env PYTHONPATH=${SSF_PYTHONPATH:?a folder holding timm 0.6.5} python3" --out "$OUT/ssf.json"
fi
