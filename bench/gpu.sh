#!/bin/bash
# Everything issue 13 measures on a GPU, in one command (<= 10 min on a fresh GPU machine, no network):
# the CUDA tests, then each benchmark at GPU size. Prints figures; record them in bench/RESULTS.md
# with the device line printed first.
#
# Here (once, ~3 min):   bash ../shared/tools/gpu-wheels.sh      # Ray, MLflow, Optuna as wheels in .whl/
# There (the device tool's run, carry [".whl"]):   bash bench/gpu.sh
# Without .whl/ (a machine that has the project installed) it runs as is.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -f .whl/install.sh ]; then
    bash .whl/install.sh
    export PYTHONPATH=/tmp/site:$PWD
fi
export SWEEPER_OFFLINE=1 SWEEPER_CACHE=${SWEEPER_CACHE:-/tmp/sweeper-gpu-cache}
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print('device:', torch.cuda.get_device_name(), '| torch', torch.__version__, '| CUDA', torch.version.cuda)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

step() { echo; echo "=== $* ($(date +%T))"; }
step "CUDA tests"
python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_cuda_fid.py || echo "CUDA TESTS FAILED (figures below still printed)"
step "trial throughput: our step vs a seed-style loop (DCGAN-64, WGAN-GP-64)"
timeout 240 python3 bench/trial_throughput.py --gpu || echo "trial_throughput: exit $?"
step "FID-10k seconds and precision vs fp32"
timeout 150 python3 bench/fid_speed.py --gpu || echo "fid_speed: exit $?"
step "packing: k trials on one GPU, aggregate img/s"
timeout 240 python3 bench/packing.py --gpu || echo "packing: exit $?"
