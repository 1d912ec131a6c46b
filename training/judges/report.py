"""What every judge shares: generating its prompts at several guidance scales on the same noise, naming the scales,
picking the best one, and writing eval.json and the accuracy-against-guidance plot. Each judge (training/judges/
shapes.py, ...) adds what only it knows: its prompts, how it reads an image, and its grids.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

RIGHT, WRONG = (20, 150, 40), (210, 30, 30)  # the colours of right and wrong marks in every judge's grids


def guidance_key(guidance_scale: float) -> str:
    """How a guidance scale names its entry in the metrics: 1.0 → "1", 2.5 → "2.5"."""
    return f"{guidance_scale:g}"


def check_guidance_scales(guidance_scales) -> list[float]:
    """The scales, sorted, as floats; a ValueError unless they are a non-empty list of distinct numbers ≥ 0."""
    scales = list(guidance_scales) if isinstance(guidance_scales, Sequence) else None
    if not scales or not all(
        isinstance(g, (int, float)) and not isinstance(g, bool) and math.isfinite(g) and g >= 0 for g in scales
    ):
        raise ValueError(f"`guidance_scales`: {guidance_scales!r} must be a non-empty list of numbers ≥ 0.")
    if len(set(scales)) != len(scales):
        raise ValueError(f"`guidance_scales`: {guidance_scales!r} repeats a scale; give each once.")
    return sorted(float(g) for g in scales)


def best_guidance_scale(scales: Sequence[float], accuracy: dict[str, dict[str, float]], key: str = "all") -> float:
    """The scale with the highest `accuracy[scale][key]`; a tie goes to the smaller scale (closer to the model's own
    distribution)."""
    return max(scales, key=lambda g: (accuracy[guidance_key(g)][key], -g))


def generate_per_scale(
    pipeline,
    prompts: Sequence[str],
    guidance_scales: Sequence[float],
    num_inference_steps: int,
    seed: int,
    batch_size: int,
    scheduler: str | None = None,
    height: int | None = None,
    width: int | None = None,
    progress: bool = True,
    **call_kwargs,
) -> tuple[dict[float, list[Image.Image]], str]:
    """Every prompt at each guidance scale: ({scale: images in prompt order}, the scheduler's class name).

    Image i is drawn from the generator seeded `seed + i` at every scale, so the scales are compared on the same
    starting noise and an image does not depend on `batch_size`. `scheduler` (a name of pipelines.schedulers)
    replaces the pipeline's for the run only; the pipeline's own progress bar is off meanwhile (one bar here counts
    all denoising steps). `call_kwargs` go to every pipeline call (e.g. `image`/`mask_image` lists, sliced with the
    prompts when they are lists of the same length)."""
    import numpy as np
    import torch
    from tqdm.auto import tqdm

    from pipelines.schedulers import make_scheduler

    num_batches = math.ceil(len(prompts) / batch_size)
    batches = np.array_split(np.arange(len(prompts)), num_batches)  # near-equal batches: no small last one
    own_scheduler, own_bar_config = pipeline.scheduler, dict(getattr(pipeline, "_progress_bar_config", {}))
    if scheduler is not None:
        pipeline.scheduler = make_scheduler(scheduler, own_scheduler.config)
    pipeline.set_progress_bar_config(disable=True)
    steps_per_call = num_inference_steps
    if "strength" in call_kwargs:  # img2img / inpainting run the last `strength` of the schedule
        steps_per_call = max(1, int(num_inference_steps * call_kwargs["strength"]))
    bar = tqdm(total=len(guidance_scales) * num_batches * steps_per_call, unit="step", desc="judging",
               disable=not progress)  # fmt: skip

    def tick(pipe, step: int, timestep, callback_kwargs: dict) -> dict:
        bar.update()
        return {}

    images: dict[float, list[Image.Image]] = {}
    try:
        scheduler_name = type(pipeline.scheduler).__name__
        for scale in guidance_scales:
            bar.set_postfix(guidance=guidance_key(scale))
            images[scale] = []
            for indices in batches:
                kwargs = {k: [v[i] for i in indices] if isinstance(v, list) and len(v) == len(prompts) else v
                          for k, v in call_kwargs.items()}  # fmt: skip
                if height is not None:
                    kwargs.update(height=height, width=width)
                images[scale] += pipeline(
                    prompt=[prompts[i] for i in indices],
                    num_inference_steps=num_inference_steps,
                    guidance_scale=scale,
                    generator=[torch.Generator().manual_seed(seed + int(i)) for i in indices],
                    output_type="pil",
                    callback_on_step_end=tick,
                    callback_on_step_end_tensor_inputs=[],
                    **kwargs,
                ).images
    finally:
        bar.close()
        pipeline.scheduler = own_scheduler
        pipeline._progress_bar_config = own_bar_config
    return images, scheduler_name


def write_eval_json(metrics: dict[str, Any], output_dir: Path, files: Sequence[Path], model: str | None) -> Path:
    """eval.json (the metrics, plus `model` and the names of the other `files` written), through a temporary file
    and a rename, so a reader never sees a half-written one."""
    report = {"model": model, **metrics, "files": [path.name for path in files]}
    json_path = Path(output_dir) / "eval.json"
    temporary = json_path.with_name(json_path.name + ".tmp")
    temporary.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(temporary, json_path)
    return json_path


def plot_accuracy(metrics: dict[str, Any], path: str | Path, attributes: Sequence[str], title: str,
                  subtitle: str = "", ceiling_label: str = "after the VAE alone") -> None:  # fmt: skip
    """Accuracy against guidance scale: one line per attribute, a thick one for "all" (when the metrics hold it),
    the autoencoder's ceiling as a dashed line (when measured) and the best scale as a dotted one; PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scales = metrics["settings"]["guidance_scales"]
    accuracy = [metrics["accuracy"][guidance_key(g)] for g in scales]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    for attribute in attributes:
        ax.plot(scales, [a[attribute] for a in accuracy], marker="o", linewidth=1.2, label=attribute)
    if all("all" in a for a in accuracy):
        ax.plot(scales, [a["all"] for a in accuracy], marker="s", color="black", linewidth=2.6, label="all four")
    if "autoencoder" in metrics:
        ceiling = metrics["autoencoder"]["accuracy"]["all"]
        ax.axhline(ceiling, color="black", linestyle="--", linewidth=1, label=f"all four {ceiling_label}")
    best = metrics["best_guidance_scale"]
    ax.axvline(best, color="gray", linestyle=":", linewidth=1)
    ax.set_title(f"{title}\n{subtitle}" if subtitle else title, fontsize=9)
    ax.set_xlabel("guidance scale")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xticks(scales)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
