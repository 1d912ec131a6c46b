"""The floor: the most training images per second this machine could give, whatever the tool.

FLOPs per training image are counted by torch's `FlopCounterMode` (matmuls, convolutions and attention, forward and
backward; normalisations, activations and the optimizer are not counted, so the floor is optimistic) on one UNet
forward + backward at the config's size. The VAE encoder and the text encoder forward, which an uncached step also
runs, are listed separately. The rate is the best measured on large matmuls and convolutions at `threads` threads
(best of a few calls, so a busy machine lowers it less); images/s floor = processes × rate / FLOPs per image, which
assumes one free core per process.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode


def count_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def flops_per_image(model_dir: str | Path, resolution: int, batch: int = 2, device: str = "cpu") -> dict[str, float]:
    """{"unet_train", "vae_encode", "text_encode"}: FLOPs per image of the UNet forward + backward, the VAE encoder
    forward and the text encoder forward, for the parts in the SD-format `model_dir` at `resolution` (counted on
    `batch` images, on `device`: the counts are the same anywhere, a GPU only gets them faster)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    unet = UNet2DConditionModel.from_pretrained(model_dir, subfolder="unet").to(device)
    vae = AutoencoderKL.from_pretrained(model_dir, subfolder="vae").to(device)
    text_encoder = CLIPTextModel.from_pretrained(model_dir, subfolder="text_encoder").to(device)
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    seq = text_encoder.config.max_position_embeddings
    latents = torch.randn(batch, unet.config.in_channels, resolution // factor, resolution // factor, device=device)
    context = torch.randn(batch, seq, unet.config.cross_attention_dim, device=device)
    timesteps = torch.randint(0, 1000, (batch,), device=device)
    images = torch.randn(batch, 3, resolution, resolution, device=device)
    tokens = torch.randint(0, text_encoder.config.vocab_size, (batch, seq), device=device)

    def unet_step():
        unet(latents, timesteps, context).sample.pow(2).mean().backward()

    with torch.no_grad():
        vae_flops = count_flops(lambda: vae.encode(images))
        text_flops = count_flops(lambda: text_encoder(tokens))
    return {"unet_train": count_flops(unet_step) / batch, "vae_encode": vae_flops / batch,
            "text_encode": text_flops / batch}  # fmt: skip


def _best_rate(fn, flops: int, budget_s: float = 1.0, most: int = 5) -> float:
    """flops / the fastest of up to `most` timed calls, fewer where one call is slow (bf16 on a CPU without bf16
    units runs ~100x slower than fp32), so that each rate takes about `budget_s`."""
    start = time.perf_counter()
    fn()  # warm-up: allocations, kernel selection
    repeats = max(1, min(most, int(budget_s / max(time.perf_counter() - start, 1e-9))))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return flops / best


def measured_rates(device: str = "cpu") -> dict[str, float]:
    """FLOP/s of a large matmul (512³ on CPU, 8192³ on a GPU) and of a 3×3 convolution (128 → 128 channels, 32×32,
    batch 4; 512 channels, 64×64, batch 32 on a GPU), fp32 and bf16, at the current torch thread count."""
    gpu = device != "cpu"
    size, channels, side, batch = (8192, 512, 64, 32) if gpu else (512, 128, 32, 4)
    sync = torch.cuda.synchronize if gpu else (lambda: None)
    rates = {}
    for dtype, name in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
        a = torch.randn(size, size, dtype=dtype, device=device)
        b = torch.randn(size, size, dtype=dtype, device=device)
        rates[f"matmul_{name}"] = _best_rate(lambda: (a @ b, sync()), 2 * size**3)
        conv = torch.nn.Conv2d(channels, channels, 3, padding=1).to(device, dtype)
        x = torch.randn(batch, channels, side, side, dtype=dtype, device=device)
        rates[f"conv_{name}"] = _best_rate(lambda: (conv(x), sync()), count_flops(lambda: conv(x)))
    return rates


def floor(model_dir: str | Path, resolution: int, device: str = "cpu") -> dict:
    """FLOPs per image, measured rates and the resulting floor (images/s per process, fp32 and bf16)."""
    with torch.no_grad():
        rates = measured_rates(device)
    flops = flops_per_image(model_dir, resolution, device=device)
    per_process = {}
    for name in ("fp32", "bf16"):
        best = max(rates[f"matmul_{name}"], rates[f"conv_{name}"])
        per_process[name] = {
            "unet_only": best / flops["unet_train"],
            "with_vae_and_text": best / (flops["unet_train"] + flops["vae_encode"] + flops["text_encode"]),
        }
    return {"flops_per_image": flops, "rates": rates, "images_per_s_per_process": per_process,
            "threads": torch.get_num_threads(), "device": device}  # fmt: skip
