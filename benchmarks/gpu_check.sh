#!/usr/bin/env bash
# One prepared GPU check (at most 8 minutes): bash benchmarks/gpu_check.sh
#   1. base-training images/s of the TEEN cifar100 preset on CIFAR-shaped random data, on 1 GPU
#      and on all GPUs (torchrun, DDP over nccl);
#   2. the batched OpTA head on the GPU against the CPU;
#   3. the selective scan against mamba-ssm's CUDA kernel (when mamba-ssm is installed).
# It installs nothing: run it in the environment of the README's install. Each part has a time
# limit (2.5 + 2.5 + 1.5 + 1 minutes); a part that fails or runs out is reported and the next runs.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
export HF_HUB_OFFLINE=1

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_check: no CUDA device is visible here (torch.cuda.is_available() is False);" \
         "run it on a GPU machine" >&2
    exit 2
fi
GPUS=$("$PY" -c 'import torch; print(torch.cuda.device_count())')
echo "gpu_check: $GPUS GPU(s): $("$PY" -c 'import torch; print(torch.cuda.get_device_name(0))')"

status=0
part() {  # part SECONDS COMMAND...
    local limit=$1; shift
    timeout --kill-after=10 "$limit" "$@"
    local rc=$?
    if [ $rc -ne 0 ]; then
        echo "gpu_check: '$*' failed or passed ${limit} s (exit $rc)" >&2
        status=1
    fi
}

part 150 "$PY" benchmarks/gpu_check.py train
if [ "$GPUS" -gt 1 ]; then
    part 150 "$PY" -m torch.distributed.run --standalone --nproc_per_node "$GPUS" \
        benchmarks/gpu_check.py train
else
    echo "train  all GPUs: this machine has one; the 1-GPU line above is the whole machine"
fi
part 90 "$PY" benchmarks/gpu_check.py opta
part 60 "$PY" benchmarks/gpu_check.py scan
exit $status
