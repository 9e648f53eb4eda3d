#!/usr/bin/env bash
# The GPU check, for whenever a GPU machine is lent (it has no network). In order:
#   1. offline install of the carried wheels (WHEELS, default benchmarks/wheels, if present)
#      and of this checkout (--no-deps, no build isolation);
#   2. the default test suite on the GPU machine (CUDA paths run where tests have them);
#   3. real CUDA smoke runs of the trainer: fp16 autocast with the grad scaler, bf16,
#      channels_last, torch.compile, and SyncBatchNorm under a 1-process torchrun;
#   4. `convssl bench step` for rotation, SparK, SimCLR and MoCo on ResNet-50 at 224 px,
#      bf16, channels_last: one Markdown table in OUT.
# Budget: under 8 minutes on one H100/H200 (each stage has its own timeout).
#
#   bash benchmarks/gpu.sh [OUT.md]
#   TINY=1 DEVICE=cpu bash benchmarks/gpu.sh OUT.md   # the same script at toy sizes on CPU (slow test)
#
# Prepare the wheels on a networked machine (Python 3.12 on the GPU machine):
#   pip download --no-deps --python-version 3.12 --only-binary=:all: -d benchmarks/wheels \
#       webdataset braceexpand tensorboard
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-benchmarks/gpu-results.md}
DEVICE=${DEVICE:-cuda}
TINY=${TINY:-0}
WHEELS=${WHEELS:-benchmarks/wheels}
export PYTHONPATH="$PWD/ssl${PYTHONPATH:+:$PYTHONPATH}"
log() { echo "== $(date +%H:%M:%S) $*" >&2; }

if [ "$TINY" != 1 ]; then
  if compgen -G "$WHEELS/*.whl" > /dev/null; then
    log "installing carried wheels from $WHEELS"
    pip install --no-index --no-deps "$WHEELS"/*.whl
  fi
  pip install --no-deps --no-build-isolation -e . > /dev/null
  log "test suite"
  timeout 240 python -m pytest tests -x -q -m "not slow" -p no:cacheprovider || log "test suite FAILED (see above)"
fi

SMOKE=$(mktemp -d)
trap 'rm -rf "$SMOKE"' EXIT
if [ "$TINY" = 1 ]; then
  RECIPES="recipes/rotation_resnet18_small.yaml recipes/spark_resnet18_small.yaml recipes/simclr_resnet18_small.yaml recipes/moco_resnet18_small.yaml"
  BENCH=(--precision fp32 --channels-last on --steps 1 --warmup 0 --set data.batch_size=16 --threads 2)
  SMOKE_PRECISIONS="fp32"
  SMOKE_SET=(--set data.batch_size=8 --set data.workers=0 --set train.compile=false)
  LIMIT=900  # a shared 2-core CPU
else
  RECIPES="recipes/rotation_resnet50_imagenet.yaml recipes/spark_resnet50_imagenet.yaml recipes/simclr_resnet50_imagenet.yaml recipes/mocov2_resnet50_imagenet.yaml"
  BENCH=(--precision bf16 --channels-last on --steps 10 --warmup 3 --set data.batch_size=128)
  SMOKE_PRECISIONS="fp16 bf16"
  SMOKE_SET=(--set train.compile=true)
  LIMIT=180
fi

log "trainer smoke runs on $DEVICE"
for precision in $SMOKE_PRECISIONS; do
  timeout "$LIMIT" python -m convssl pretrain --recipe recipes/quickstart_rotation.yaml --data data/fmnist/unlabeled \
    --out "$SMOKE/$precision" --max-steps 3 --device "$DEVICE" --quiet \
    --set train.precision="$precision" --set train.channels_last=true "${SMOKE_SET[@]}"
done
if [ "$DEVICE" = cuda ]; then  # SyncBatchNorm: DDP on the GPU converts the task's BatchNorms
  timeout 180 torchrun --nproc-per-node 1 -m convssl pretrain --recipe recipes/simclr_resnet18_small.yaml \
    --data data/fmnist/unlabeled --out "$SMOKE/ddp" --max-steps 3 --quiet --set data.workers=1
fi

log "bench step -> $OUT"
# shellcheck disable=SC2086
timeout $((LIMIT * 2)) python -m convssl bench step $(printf -- '--recipe %s ' $RECIPES) --device "$DEVICE" "${BENCH[@]}" --out "$OUT"
log "done: $OUT"
