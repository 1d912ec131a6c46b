#!/usr/bin/env bash
# The whole job on the built-in shapes dataset, on CPU: set up .venv, train the autoencoder (stage 1), train the
# text-to-image diffusion model (stage 2), draw a sample grid. Everything goes to outputs/quickstart/.
# Extra key=value arguments are passed to both training stages (e.g. `bash scripts/quickstart.sh seed=1`).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false
OUT=outputs/quickstart
CONFIG=configs/shapes.yaml
PATHS=(output_dir="$OUT/model" vae_output_dir="$OUT/vae" pretrained_vae="$OUT/vae" overwrite_output_dir=true)
start=$(date +%s)

echo "[sculpt] stage 1/2: autoencoder -> $OUT/vae"
"$PY" scripts/train_vae.py --config "$CONFIG" "${PATHS[@]}" "$@"
echo "[sculpt] stage 2/2: text-to-image diffusion -> $OUT/model"
"$ROOT/.venv/bin/accelerate" launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
  scripts/train.py --config "$CONFIG" "${PATHS[@]}" "$@"
cp "$OUT/model/samples.png" "$OUT/samples.png"
cp "$OUT/model/loss.png" "$OUT/loss.png"

elapsed=$(( $(date +%s) - start ))
cat <<DONE

[sculpt] quickstart finished in $((elapsed / 60)) min $((elapsed % 60)) s
  trained pipeline   $OUT/model/        (LatentDiffusionPipeline.from_pretrained("$OUT/model"))
  sample grid        $OUT/samples.png
  loss curve         $OUT/loss.png
  autoencoder        $OUT/vae/          (reconstructions: $OUT/vae/reconstructions.png)
  try it             .venv/bin/python scripts/sample.py $OUT/model --prompt "a large red circle on a white background" --guidance_scale 3 --out grid.png
DONE
