"""The bare UNet training step, eager and under `torch.compile`: what a trainer's loop could reach at most.

The UNet comes from the benchmark's SD-format folder; its inputs are precomputed random latents and text embeddings
(so no VAE or text encoder runs), noised by the folder's scheduler. One step = forward under autocast (bf16 or
off), MSE against the noise, backward, gradient clipping at 1.0, fused AdamW, `zero_grad`. Attention runs through
diffusers' default processor, which calls `F.scaled_dot_product_attention` (SDPA), or with `attention="classic"`
through `AttnProcessor` (baddbmm, softmax, bmm); `channels_last` puts the UNet and its input in that memory format.
No EMA: the trainers' rows carry that cost. Timed over `steps` steps after `warmup` (the first compiled step
compiles), with the device synchronised at both ends.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F


def bench_step(model_dir: str | Path, batch: int, steps: int, warmup: int, precision: str, compile: bool,
               device: str, seed: int = 0, channels_last: bool = False, attention: str = "sdpa",
               profile_steps: int = 0) -> dict:  # fmt: skip
    """{"mode", "images_per_s", "first_step_s", "peak_gpu_mib", "attention", ...} for one configuration; with
    `profile_steps`, also "profile": torch.profiler's table of the top ops by self time over that many more steps."""
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig

    from training.models import set_attention_processor

    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_pretrained(str(model_dir), subfolder="unet").to(device).train()
    set_attention_processor(unet, attention)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    unet = unet.to(memory_format=memory_format)
    attention = sorted({type(p).__name__ for p in unet.attn_processors.values()})
    scheduler = DDPMScheduler.from_pretrained(str(model_dir), subfolder="scheduler")
    text = CLIPTextConfig.from_pretrained(str(model_dir), subfolder="text_encoder")
    size = unet.config.sample_size
    latents = torch.randn(batch, unet.config.in_channels, size, size, device=device)
    context = torch.randn(batch, text.max_position_embeddings, text.hidden_size, device=device)
    noise = torch.randn_like(latents)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), device=device)
    noisy = scheduler.add_noise(latents, noise, timesteps).contiguous(memory_format=memory_format)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-5, fused=True)
    model = torch.compile(unet) if compile else unet
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()

    def step():
        with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=precision == "bf16"):
            prediction = model(noisy, timesteps, context).sample
        loss = F.mse_loss(prediction.float(), noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    sync()
    start = time.perf_counter()
    step()
    sync()
    first = time.perf_counter() - start
    for _ in range(warmup - 1):
        step()
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    per_step = (time.perf_counter() - start) / steps
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else 0.0
    result = {"mode": "torch.compile" if compile else "eager", "images_per_s": batch / per_step, "first_step_s": first,
              "peak_gpu_mib": peak, "attention": attention, "batch": batch, "steps": steps, "warmup": warmup,
              "precision": precision, "device": device, "channels_last": channels_last}  # fmt: skip
    if profile_steps:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
        with profile(activities=activities) as profiler:
            for _ in range(profile_steps):
                step()
            sync()
        sort = "self_cuda_time_total" if device.startswith("cuda") else "self_cpu_time_total"
        result["profile"] = profiler.key_averages().table(sort_by=sort, row_limit=15, max_name_column_width=48)
    return result
