#!/usr/bin/env bash
# The one prepared GPU check (issues 3, 5 and 6), run on a lent CUDA machine from the repo
# root with ML-100K in ./data and an ML-100K bundle in runs/gpu-bundle:
#   bash benchmarks/gpu.sh "$OUT"
# Each step has its own time limit so one slow step cannot eat the others' figures.
set -u
OUT=${1:-/tmp/gpu-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD MELU_DATA_DIR=$PWD/data MELU_CACHE_DIR=/tmp/melu-cache
py=python3
step() { local name=$1 limit=$2; shift 2; echo "== $name ($*)"; timeout "$limit" "$@" >"$OUT/$name.txt" 2>&1; echo "   exit $?"; }
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  $py -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"; } >"$OUT/device.txt" 2>&1
step meta_train_cuda 110 $py benchmarks/meta_train.py --device cuda --meta-batch 32 --steps 1,5 --threads 0
step train_cuda_bf16 80 $py -m melu train --dataset ml-100k --out /tmp/gpu-run --device cuda --amp bf16 --epochs 3
step service_cuda 45 $py benchmarks/service.py --model runs/gpu-bundle --only a --device cuda
step service_cpu 45 $py benchmarks/service.py --model runs/gpu-bundle --only a --device cpu
step scale_cuda 270 $py benchmarks/meta_train_scale.py --device cuda --nprocs 1 --meta-batch 32,256,1024 --gen-dir /tmp/melu-gen
step train_step_cuda 150 $py benchmarks/train_step.py --device cuda --meta-batch 32,1024 --rounds 2
