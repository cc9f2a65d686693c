#!/usr/bin/env bash
# Accelerator figures for BENCHMARK_RECORDS.md ("Training speed on one H100"): the LAE recipe's backbone
# (EfficientNetV2-M, 384 px, 32 images/device) and ResNet-18 / the Xing baseline, float32 and
# bfloat16, on whatever accelerator JAX finds. Usage, from the repository root:
#   bash launch/bench/bench_accelerator.sh [OUTPUT_DIR] [STEPS]
# Each row is `python -m launch.bench.benchmark` (see its docstring), then `python -m launch.bench.bench_augment`
# (device augmentation per preset); the log goes to OUTPUT_DIR/benchmark.txt.
set -u
out=${1:-/tmp/age_jax_accelerator}
steps=${2:-20}
python=${PYTHON:-python3}
mkdir -p "$out"
log="$out/benchmark.txt"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv | tee -a "$log"
"$python" -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())" 2>&1 | tee -a "$log"

bench() {  # quiet absl/XLA info lines; keep the figures
  "$python" -m launch.bench.benchmark --steps="$steps" --rounds=3 "$@" 2>&1 | grep -v '^[IW][0-9]\{4\}' | tee -a "$log"
}
for dtype in ${EFFICIENTNET_DTYPES-bfloat16 float32}; do
  bench --model=efficientnetv2_m --image_size=384 --batch_size=32 --dtype=$dtype
done
torch_twin=""  # PyTorch eager on the same GPU, interleaved, where torch sees one
"$python" -c "import torch; assert torch.cuda.is_available()" 2>/dev/null && torch_twin="--torch --torch_device=cuda"
for dtype in bfloat16 float32; do
  bench --model=resnet18 --image_size=224 --batch_size=256 --dtype=$dtype $torch_twin
  bench --model=xing_baseline --image_size=227 --batch_size=256 --dtype=$dtype --lowering=xla,patches $torch_twin
done
# Device augmentation per preset at its paper size, and its share of the train step (launch/bench/bench_augment.py).
"$python" -m launch.bench.bench_augment --steps="$steps" --rounds=3 --dtype=bfloat16 2>&1 | grep -v '^[IW][0-9]\{4\}' | tee -a "$log"
