"""Sampling side by side: sculpt's `LatentDiffusionPipeline` (with our DDPMScheduler, and with diffusers') against
diffusers' `StableDiffusionPipeline`, all on the very same component objects, the same prompts and the same
per-image generators. Calls are interleaved (ours, ours + diffusers' scheduler, SD; then the order rotated by one) and
each pipeline runs one untimed call first, so one-time costs and a drifting machine load fall on all of them alike."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .runs import median_spread

PIPELINES = {
    "ours": "LatentDiffusionPipeline + our DDPMScheduler",
    "ours_diffusers_scheduler": "LatentDiffusionPipeline + diffusers' DDPMScheduler",
    "sd": "diffusers StableDiffusionPipeline (its DDPMScheduler)",
}


def load_pipelines(model_dir: str | Path) -> dict:
    """The three pipelines over one set of loaded components (each with its own scheduler instance: `set_timesteps`
    keeps state)."""
    from diffusers import DDPMScheduler as DiffusersDDPMScheduler
    from diffusers import StableDiffusionPipeline

    from pipelines import DDPMScheduler, LatentDiffusionPipeline

    sd = StableDiffusionPipeline.from_pretrained(str(model_dir), safety_checker=None, requires_safety_checker=False)
    parts = {name: getattr(sd, name) for name in ("vae", "text_encoder", "tokenizer", "unet")}
    pipes = {
        "ours": LatentDiffusionPipeline(**parts, scheduler=DDPMScheduler.from_config(sd.scheduler.config)),
        "ours_diffusers_scheduler": LatentDiffusionPipeline(
            **parts, scheduler=DiffusersDDPMScheduler.from_config(sd.scheduler.config)
        ),
        "sd": sd,
    }
    for pipe in pipes.values():
        pipe.set_progress_bar_config(disable=True)
    return pipes


def sample(pipe, prompts: list[str], steps: int, guidance: float, seed: int) -> np.ndarray:
    generators = [torch.Generator().manual_seed(seed + i) for i in range(len(prompts))]
    return pipe(prompt=prompts, num_inference_steps=steps, guidance_scale=guidance, generator=generators,
                output_type="np").images  # fmt: skip


def bench_sampling(model_dir: str | Path, prompts: list[str], steps: int, guidance: float, repeats: int,
                   seed: int = 0) -> dict:  # fmt: skip
    """{"rows": [{pipeline, s_per_image (median, min, max), ratio_to_sd (median, min, max), max_abs_diff_vs_sd}],
    "settings": {...}}. The ratio is per repeat (paired: the calls of one repeat run back to back)."""
    pipes = load_pipelines(model_dir)
    for pipe in pipes.values():  # one-time costs (allocations, lazy inits) outside the timing
        sample(pipe, prompts, 2, guidance, seed)
    seconds = {name: [] for name in pipes}
    images = {}
    names = list(pipes)
    for repeat in tqdm(range(repeats), desc="sampling"):
        # Each repeat starts with the next pipeline, so no pipeline always runs first (or right after another).
        for name in names[repeat % len(names):] + names[: repeat % len(names)]:
            pipe = pipes[name]
            start = time.perf_counter()
            images[name] = sample(pipe, prompts, steps, guidance, seed)
            seconds[name].append((time.perf_counter() - start) / len(prompts))
    rows = []
    for name in pipes:
        ratios = [a / b for a, b in zip(seconds[name], seconds["sd"])]
        rows.append({
            "pipeline": name, "label": PIPELINES[name], "s_per_image": median_spread(seconds[name]),
            "ratio_to_sd": median_spread(ratios),
            "max_abs_diff_vs_sd": float(np.abs(images[name] - images["sd"]).max()),
        })  # fmt: skip
    settings = {"steps": steps, "batch": len(prompts), "guidance_scale": guidance, "repeats": repeats, "seed": seed,
                "threads": torch.get_num_threads()}  # fmt: skip
    return {"rows": rows, "settings": settings}
