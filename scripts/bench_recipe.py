"""What each model of the quickstart recipe costs per image on this machine: a training step (forward, backward,
AdamW) and a sampling step (one classifier-free-guided UNet call, i.e. a doubled batch), fp32 and bf16 autocast,
for the UNet and VAE of `configs/shapes.yaml` next to the alternatives docs/recipe.md rejected.

    python scripts/bench_recipe.py [--threads 1] [--batch 32] [--repeats 3] [--config configs/shapes.yaml]

CPU time per image is the process's CPU seconds (not wall time), so that a busy machine distorts it less; the
"× chosen" column is the ratio to the chosen model's fp32 cost.
"""

import argparse
import time
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from training.cli import USER_ERRORS
from training.config import load_config

ROOT = Path(__file__).resolve().parent.parent

# The UNet of the first quickstart recipe: attention at 16×16 (256 tokens) as well as 8×8.
FIRST_UNET = dict(
    sample_size=16, in_channels=4, out_channels=4, down_block_types=["CrossAttnDownBlock2D"] * 2,
    up_block_types=["CrossAttnUpBlock2D"] * 2, block_out_channels=[64, 128], layers_per_block=1,
    cross_attention_dim=64, attention_head_dim=8, norm_num_groups=32,
)  # fmt: skip
# A factor-4 VAE (4×8×8 latents): 4× cheaper UNet, but it loses the colours (docs/recipe.md).
FACTOR4_VAE = dict(
    in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3,
    block_out_channels=[32, 64, 64], layers_per_block=1, latent_channels=4, norm_num_groups=8, sample_size=32,
)  # fmt: skip


def cpu_ms_per_image(step, batch: int, repeats: int, bf16: bool) -> float:
    """The fastest of `repeats` timed calls (after one warm-up), in CPU milliseconds per image."""
    times = []
    for i in range(repeats + 1):
        start = time.process_time()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            step()
        if i:
            times.append(time.process_time() - start)
    return min(times) / batch * 1000


def bench_unet(config: dict, batch: int, repeats: int, bf16: bool, seq: int) -> tuple[float, float]:
    unet = UNet2DConditionModel(**config)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    size = config["sample_size"]
    x = torch.randn(batch, config["in_channels"], size, size)
    t = torch.randint(0, 1000, (batch,))
    text = torch.randn(batch, seq, config["cross_attention_dim"])

    def train():
        loss = (unet(x, t, text).sample.float() - x).pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def sample():
        with torch.no_grad():
            unet(torch.cat([x, x]), torch.cat([t, t]), torch.cat([text, text]))

    return cpu_ms_per_image(train, batch, repeats, bf16), cpu_ms_per_image(sample, batch, repeats, bf16)


def bench_vae(config: dict, batch: int, repeats: int, bf16: bool) -> tuple[float, float]:
    vae = AutoencoderKL(**config)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=1e-4)
    x = torch.randn(batch, 3, config["sample_size"], config["sample_size"])

    def train():
        posterior = vae.encode(x).latent_dist
        loss = (vae.decode(posterior.sample()).sample.float() - x).abs().mean() + 1e-6 * posterior.kl().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def decode():
        with torch.no_grad():
            vae.decode(vae.encode(x).latent_dist.mode())

    return cpu_ms_per_image(train, batch, repeats, bf16), cpu_ms_per_image(decode, batch, repeats, bf16)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "shapes.yaml"))
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the quickstart: 1 per process)")
    parser.add_argument("--batch", type=int, default=32, help="images per call (the quickstart: 32 per process)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    for flag, value in (("--threads", args.threads), ("--batch", args.batch), ("--repeats", args.repeats)):
        if value < 1:
            parser.error(f"{flag}: {value} must be >= 1")
    try:
        config = load_config(args.config)
    except USER_ERRORS as error:
        parser.error(f"--config: {error}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    seq = config.text_encoder_config.get("max_position_embeddings", 77)

    rows = []
    for name, unet in (("UNet, chosen (shapes.yaml)", config.unet_config), ("UNet, first recipe", FIRST_UNET)):
        for bf16 in (False, True):
            rows.append(("unet", name, bf16, *bench_unet(unet, args.batch, args.repeats, bf16, seq)))
    for name, vae in (("VAE, chosen (shapes.yaml)", config.vae_config), ("VAE, factor 4", FACTOR4_VAE)):
        for bf16 in (False, True):
            rows.append(("vae", name, bf16, *bench_vae(vae, args.batch, args.repeats, bf16)))

    print(f"CPU ms per image, {args.threads} thread(s), batch {args.batch}, best of {args.repeats}")
    print(f"{'model':28s} {'dtype':>5s} {'train':>8s} {'× chosen':>8s} {'sample':>8s} {'× chosen':>8s}")
    chosen = {kind: (train, sample) for kind, name, bf16, train, sample in rows if "chosen" in name and not bf16}
    for kind, name, bf16, train, sample in rows:
        base_train, base_sample = chosen[kind]
        print(f"{name:28s} {'bf16' if bf16 else 'fp32':>5s} {train:8.2f} {train / base_train:8.2f} {sample:8.2f} "
              f"{sample / base_sample:8.2f}")  # fmt: skip
    print("sample = one guided UNet call per image (batch doubled for CFG); for the VAE, encode + decode")


if __name__ == "__main__":
    main()
