#!/usr/bin/env bash
# The K-fold studies of RESULTS.md (rating MAE and full-catalog top-N for new users), from a
# clone: `make install` first, MovieLens under $MELU_DATA_DIR (or ./data via `melu data
# download`). Resumable: rerun the same command and finished folds are kept.
#   studies/topn_cv.sh ml-100k            # all 5 folds (~30 min on 2 busy cores)
#   studies/topn_cv.sh ml-1m 0,1          # a part study: folds 0 and 1 only (~40 min each)
set -euo pipefail
cd "$(dirname "$0")/.."
dataset=${1:-ml-100k}
folds=${2:-}
out=runs/cv-${dataset}
args=(--dataset "$dataset" --folds 5 --seeds 1 --out "$out" --threads 1 --no-progress)
if [[ -n "$folds" ]]; then args+=(--only-folds "$folds"); fi
exec .venv/bin/melu cv "${args[@]}"
