#!/usr/bin/env bash
# One prepared GPU check for fastnas: versions, the kernel tests compiled on the GPU (no
# interpreter), the kernel benchmarks, then the search step eager / compiled / CUDA graphs.
# Target: under 12 minutes on one H100/H200-class GPU.
#
#   bash benchmarks/gpu_check.sh                 # every step
#   bash benchmarks/gpu_check.sh tests kernels   # chosen steps, in order
#
# Outputs go under $OUT when it is set, else benchmarks/out: versions.txt, kernel_tests.txt,
# kernels/kernels.{csv,md} (the table to copy into benchmarks/RESULTS.md), kernel_bench.txt,
# search_step/{compiled,cudagraphs}.{csv,md} (the search-step tables for RESULTS.md),
# distributed/ (with 2+ GPUs: the NCCL tests and the torchrun scaling table).
# A failing step does not stop the later ones; the exit status is non-zero if any failed.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT_DIR="${OUT:-$PWD/benchmarks/out}"
mkdir -p "$OUT_DIR"
unset TRITON_INTERPRET FASTNAS_BACKEND  # compiled kernels; each test picks its own backend
export PYTHONUNBUFFERED=1

step_versions() {
  {
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem \
      --format=csv || echo "nvidia-smi unavailable"
    python - <<'EOF'
import platform, torch
try:
    import triton
    triton_version = triton.__version__
except ImportError:
    triton_version = "not installed"
print(f"python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
      f"triton {triton_version}")
print("GPU:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
EOF
  } 2>&1 | tee "$OUT_DIR/versions.txt"
  python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
    || { echo "no CUDA device: this check needs a GPU"; return 1; }
}

ensure_importable() {
  # From a checkout, `import fastnas` serves `fastnas.kernels` from kernels/ itself (see
  # fastnas/__init__.py): putting the repository on PYTHONPATH is enough, no install needed.
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
  python -c "import fastnas.kernels"
}

step_tests() {
  # Every kernel test, compiled for this GPU (conftest sets TRITON_INTERPRET only without CUDA).
  # The sm_80/sm_90 compile check needs no GPU: CI runs it on every commit, not here.
  timeout 300 python -m pytest tests/test_kernels*.py tests/test_ops_custom.py -q \
    -p no:cacheprovider --durations=5 --ignore=tests/test_kernels_gpu_targets.py \
    2>&1 | tee "$OUT_DIR/kernel_tests.txt"
}

step_kernels() {
  timeout 300 python benchmarks/kernels.py --out "$OUT_DIR/kernels" \
    2>&1 | tee "$OUT_DIR/kernel_bench.txt"
}

step_search() {
  # The DARTS search step (paper network, first order, fp32, batch 64): reference, fast eager
  # (Triton kernels), fast under torch.compile, then compiled with CUDA graphs
  # (mode="reduce-overhead"). Speed, peak memory, GPU kernels per step, compile time; each
  # prints a markdown table for benchmarks/RESULTS.md.
  mkdir -p "$OUT_DIR/search_step"
  local common=(--orders 1 --precisions fp32 --checkpointing off --batch-sizes 64 --steps 5)
  timeout 420 python benchmarks/search_step.py "${common[@]}" \
    --csv "$OUT_DIR/search_step/compiled.csv" 2>&1 | tee "$OUT_DIR/search_step/compiled.md"
  timeout 300 python benchmarks/search_step.py "${common[@]}" --supernets reference fast-compiled \
    --compile-mode reduce-overhead --csv "$OUT_DIR/search_step/cudagraphs.csv" \
    2>&1 | tee "$OUT_DIR/search_step/cudagraphs.md"
}

step_distributed() {
  # With two or more GPUs: a two-rank search and training over NCCL, then the search step under
  # torchrun at world sizes 1, 2 (and 4, 8 where there are as many GPUs), global batch 64: throughput,
  # scaling efficiency and memory per rank (benchmarks/distributed.py). One GPU: skipped, said.
  local gpus
  gpus="$(python -c 'import torch; print(torch.cuda.device_count())')"
  if [ "$gpus" -lt 2 ]; then
    echo "distributed: $gpus GPU(s) here, the NCCL step needs 2 or more: skipped"
    return 0
  fi
  local worlds=(1 2)
  [ "$gpus" -ge 4 ] && worlds+=(4)
  [ "$gpus" -ge 8 ] && worlds+=(8)
  mkdir -p "$OUT_DIR/distributed"
  # A two-GPU search and final training (DDP, SyncBN) from the command line, over NCCL.
  local run=(timeout 300 python -m torch.distributed.run --nproc_per_node 2 -m fastnas)
  { "${run[@]}" search --dataset digits --epochs 1 --layers 3 --channels 8 --batch-size 64 \
      --quiet --no-plots --output "$OUT_DIR/distributed/search" \
    && "${run[@]}" train --genotype DARTS_V2 --dataset digits --epochs 1 --layers 3 \
      --channels 8 --batch-size 64 --sync-bn --quiet --no-plots \
      --output "$OUT_DIR/distributed/train"; } 2>&1 | tee "$OUT_DIR/distributed/cli.txt"
  timeout 420 python benchmarks/distributed.py --worlds "${worlds[@]}" --global-batch 64 \
    --steps 5 --csv "$OUT_DIR/distributed/distributed.csv" \
    2>&1 | tee "$OUT_DIR/distributed/distributed.md"
}

# --- Hook: further GPU benchmarks are steps like the ones above: add a
# --- `step_<name>() { ...; }` writing under "$OUT_DIR/<name>", and <name> to DEFAULT_STEPS.
DEFAULT_STEPS="versions tests kernels search distributed"

failed=()
ensure_importable
for step in ${*:-$DEFAULT_STEPS}; do
  echo "=== $step ($(date -u +%H:%M:%S))"
  if ! "step_$step"; then
    failed+=("$step")
    [ "$step" = versions ] && break
  fi
done
echo "=== done ($(date -u +%H:%M:%S)); outputs in $OUT_DIR"
if [ ${#failed[@]} -gt 0 ]; then
  echo "FAILED steps: ${failed[*]}"
  exit 1
fi
