#!/usr/bin/env bash
# sculpt vs diffusers at Stable Diffusion 1.5 size on one GPU, in one short call (about 4 minutes on an H100/H200):
#
#   bash scripts/bench_gpu.sh PATH/TO/diffusers_train_text_to_image.py [--tiny [--tiny_compile]] [--output_dir DIR]
#
# 1. scripts/bench_vs_diffusers.py with configs/bench_sd15.yaml (random-weight SD-1.5 UNet, VAE and CLIP-L text
#    encoder, 512 px shapes): diffusers' train_text_to_image.py and sculpt's trainer, bf16, batch 16, 1 process,
#    3 + 10 timed steps, 1 repeat, no priming, no sampling: images/s, start-up, peak GPU memory, ratio to diffusers.
# 2. scripts/bench_step.py on the same UNet: the bare training step (bf16 autocast, SDPA, fused AdamW, precomputed
#    random latents and text embeddings), eager and torch.compile'd, against diffusers' trainer row of step 1.
# Tables go to DIR (default outputs/bench_gpu; the parts there are ~4 GB) as bench.md, bench.json and
# step-compile-{no,yes}.{md,json}, and to $OUT too when it is set (the device runner brings back what is there).
# Time limits: 200 s for step 1 (80 s per trainer run), 30 s eager, 70 s compiled: 5 minutes at the very most.
#
# --tiny runs the same code path at toy widths (SD-1.5's block structure, 64 px) on whatever device there is, CPU
# included: a check of the script, not a measurement.
#
# The Python ($PYTHON, default python3) needs sculpt's requirements and a CUDA torch. If it can import
# torchvision.transforms it also runs diffusers' script; otherwise bench_vs_diffusers.py makes a throwaway venv for
# it (pip, PyPI).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"
SCRIPT="${1:?usage: bash scripts/bench_gpu.sh PATH/TO/diffusers_train_text_to_image.py [--tiny] [--output_dir DIR]}"
shift
TINY=0
DIR=outputs/bench_gpu
MODES="no yes"
while [ $# -gt 0 ]; do
  case "$1" in
    --tiny) TINY=1; DIR=outputs/bench_gpu_tiny; MODES="no" ;;
    --tiny_compile) MODES="no yes" ;;
    --output_dir) DIR="$2"; shift ;;
    *) echo "bench_gpu.sh: error: unknown argument $1 (use --tiny, --tiny_compile, --output_dir DIR)" >&2; exit 2 ;;
  esac
  shift
done

BENCH=(--batch 16 --steps 10 --warmup 3 --num_samples 64)
STEP=(--batch 16 --steps 10 --warmup 3)
TINY_CONFIG=()
EAGER_LIMIT=30 COMPILE_LIMIT=70
if [ "$TINY" = 1 ]; then
  # SD-1.5's structure (4 VAE blocks, 4 UNet levels with cross-attention in 3, 2 layers per block) at toy widths.
  TINY_CONFIG=(resolution=64
    "vae_config.block_out_channels=[8,8,16,16]" vae_config.norm_num_groups=8 vae_config.layers_per_block=1
    vae_config.sample_size=64 "unet_config.block_out_channels=[32,32,64,64]" unet_config.norm_num_groups=8
    unet_config.sample_size=8 unet_config.cross_attention_dim=32 unet_config.layers_per_block=1
    text_encoder_config.hidden_size=32 text_encoder_config.intermediate_size=64
    text_encoder_config.num_hidden_layers=2 text_encoder_config.num_attention_heads=4)
  BENCH=(--batch 4 --steps 2 --warmup 1 --num_samples 8)
  STEP=(--batch 4 --steps 2 --warmup 2 --threads 1)
  # Inductor compiles for a CPU far slower than for a GPU: the tiny UNet's first compiled step took 704 s on 2 busy
  # cores, so --tiny leaves the compiled row out unless --tiny_compile (after --tiny) asks for it.
  EAGER_LIMIT=120 COMPILE_LIMIT=1200
  export OMP_NUM_THREADS=1
fi

DIFFUSERS_PYTHON=()
if "$PYTHON" -c "from torchvision import transforms" 2>/dev/null; then
  DIFFUSERS_PYTHON=(--diffusers_python "$(command -v "$PYTHON")")
fi
"$PYTHON" -c "import torch; print('torch', torch.__version__, 'GPU:', torch.cuda.get_device_name() if torch.cuda.is_available() else 'none')"

timeout 200 "$PYTHON" scripts/bench_vs_diffusers.py --diffusers_script "$SCRIPT" --config configs/bench_sd15.yaml \
  --mixed_precision bf16 "${BENCH[@]}" --repeats 1 --processes 1 --skip_cached --skip_sampling --no_prime \
  --run_timeout 80 --output_dir "$DIR" "${DIFFUSERS_PYTHON[@]}" "${TINY_CONFIG[@]}"
if [ -n "${OUT:-}" ]; then cp "$DIR/bench.md" "$DIR/bench.json" "$OUT/"; fi

# Eager and compiled in two calls with their own limits: a compile that takes too long costs only its own row.
for MODE in $MODES; do
  LIMIT=$([ "$MODE" = no ] && echo "$EAGER_LIMIT" || echo "$COMPILE_LIMIT")
  timeout "$LIMIT" "$PYTHON" scripts/bench_step.py --model "$DIR/parts/model" "${STEP[@]}" --mixed_precision bf16 \
    --compile "$MODE" --against "$DIR/bench.json" --output "$DIR/step-compile-$MODE.json" \
    | tee "$DIR/step-compile-$MODE.md" || echo "bench_step.py --compile $MODE stopped (exit $?, limit ${LIMIT} s)"
  if [ -n "${OUT:-}" ]; then cp "$DIR"/step-compile-"$MODE".* "$OUT/" 2>/dev/null || true; fi
done
