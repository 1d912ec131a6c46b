"""What every judge shares: argument checks, generating its prompts at several guidance scales on the same noise
(image i seeded `seed + i`, one progress bar over every denoising step), round trips through the pipeline's VAE
(the ceiling of any score, whatever the UNet), naming the scales and picking the best one, and writing eval.json and
the accuracy-against-guidance plot. Each judge (shapes.py, digits.py, emoji.py) adds what only it knows: its prompts,
how it reads an image, and its grids.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

RIGHT, WRONG = (20, 150, 40), (210, 30, 30)  # the colours of right and wrong marks in every judge's grids


def guidance_key(guidance_scale: float) -> str:
    """How a guidance scale names its entry in the metrics: 1.0 → "1", 2.5 → "2.5"."""
    return f"{guidance_scale:g}"


def best_guidance_scale(scales: Sequence[float], accuracy: dict[str, Any], key: str | None = None) -> float:
    """The scale with the highest `accuracy[scale]` (or `accuracy[scale][key]`); a tie goes to the smaller scale
    (closer to the model's own distribution)."""
    return max(scales, key=lambda g: (accuracy[guidance_key(g)] if key is None else accuracy[guidance_key(g)][key],
                                      -g))  # fmt: skip


def check_guidance_scales(guidance_scales: Any, argument: str = "guidance_scales") -> list[float]:
    """A non-empty list of distinct finite numbers ≥ 0, sorted; a ValueError naming `argument` otherwise."""
    scales = list(guidance_scales) if isinstance(guidance_scales, Sequence) and not isinstance(guidance_scales, str) else None
    if not scales or not all(
        isinstance(g, (int, float)) and not isinstance(g, bool) and math.isfinite(g) and g >= 0 for g in scales
    ):
        raise ValueError(f"`{argument}`: {guidance_scales!r} must be a non-empty list of numbers ≥ 0.")
    if len(set(scales)) != len(scales):
        raise ValueError(f"`{argument}`: {guidance_scales!r} repeats a scale; give each once.")
    return sorted(float(g) for g in scales)


def check_integers(**values: tuple[Any, int]) -> None:
    """Each `name=(value, lowest)`: an integer ≥ lowest, else a ValueError naming it."""
    for name, (value, low) in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"`{name}`: {value!r} must be an integer ≥ {low}.")


def square_resolution(pipeline, judge: str) -> int:
    height, width = pipeline.default_height_width()
    if height != width:
        raise ValueError(f"`pipeline`: makes {height}x{width} images; the {judge} judge reads square ones.")
    return width


class StepBar:
    """One tqdm bar over every denoising step of a judge's run, fed by the pipelines' step-end callback; the
    pipeline's own bar is off meanwhile and put back by `close`."""

    def __init__(self, pipelines: Sequence, total: int, desc: str, progress: bool):
        from tqdm.auto import tqdm

        self.pipelines = pipelines
        self.saved = [dict(getattr(p, "_progress_bar_config", {})) for p in pipelines]
        for pipeline in pipelines:
            pipeline.set_progress_bar_config(disable=True)
        self.bar = tqdm(total=total, unit="step", desc=desc, disable=not progress)

    def tick(self, pipe, step: int, timestep, callback_kwargs: dict) -> dict:
        self.bar.update()
        return {}

    def close(self) -> None:
        self.bar.close()
        for pipeline, saved in zip(self.pipelines, self.saved):
            pipeline._progress_bar_config = saved


def _generators(seeds: Sequence[int]):
    import torch

    return [torch.Generator().manual_seed(int(seed)) for seed in seeds]


def num_batches(num_prompts: int, batch_size: int) -> int:
    """How many pipeline calls `generate` makes for `num_prompts` prompts: near-equal batches of at most
    `batch_size`."""
    return math.ceil(num_prompts / batch_size) if num_prompts else 0


def generate(
    pipeline, prompts: Sequence[str], guidance_scale: float, num_inference_steps: int, seed: int, batch_size: int,
    bar: StepBar, **inputs: Any,
) -> list[Image.Image]:
    """`pipeline(prompt=...)` for every prompt, in near-equal batches of at most `batch_size`; image i is drawn from
    the generator seeded `seed + i`, so it does not depend on the batching and the guidance scales (and in-painting
    with and without a caption) are compared on the same noise. `inputs` go to every call (`image`, `mask_image`:
    one for all prompts, or a list with one per prompt)."""
    size = pipeline.default_height_width()
    batches = np.array_split(np.arange(len(prompts)), num_batches(len(prompts), batch_size))
    images = []
    for indices in batches:
        call_inputs = {k: ([v[i] for i in indices] if isinstance(v, list) else v) for k, v in inputs.items()}
        images += pipeline(
            prompt=[prompts[i] for i in indices], height=size[0], width=size[1],
            num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
            generator=_generators(seed + indices), output_type="pil",
            callback_on_step_end=bar.tick, callback_on_step_end_tensor_inputs=[], **call_inputs,
        ).images  # fmt: skip
    return images


def vae_round_trip(pipeline, images: Sequence[Image.Image], batch_size: int = 100) -> list[Image.Image]:
    """Encode (posterior mode) and decode each image with the pipeline's VAE: what the decoder alone keeps."""
    import torch

    vae, decoded = pipeline.vae, []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            chunk = [image.convert("RGB") for image in images[start : start + batch_size]]
            pixels = pipeline.image_processor.preprocess(chunk).to(device=vae.device, dtype=vae.dtype)
            out = vae.decode(vae.encode(pixels).latent_dist.mode()).sample
            decoded += pipeline.image_processor.postprocess(out, "pil")
    return decoded


def as_rgb_array(image: Image.Image | np.ndarray, allow_gray: bool = True) -> np.ndarray:
    """(H, W, 3) float64 in 0..255 from a PIL image, a uint8 array, or a float array in [0, 1] (a pipeline's "np");
    a (H, W) gray array too, unless the judge reads colours (`allow_gray=False`)."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float64)
    pixels = np.asarray(image)
    if pixels.ndim == 2 and allow_gray:
        pixels = np.repeat(pixels[..., None], 3, axis=-1)
    if pixels.ndim != 3 or pixels.shape[-1] != 3:
        accepted = "(height, width, 3) RGB or (height, width)" if allow_gray else "(height, width, 3) RGB"
        raise ValueError(f"`image`: an array of shape {pixels.shape}; expected {accepted}.")
    if np.issubdtype(pixels.dtype, np.floating):
        return np.clip(pixels.astype(np.float64), 0.0, 1.0) * 255.0
    return pixels.astype(np.float64)


def generate_per_scale(
    pipeline,
    prompts: Sequence[str],
    guidance_scales: Sequence[float],
    num_inference_steps: int,
    seed: int,
    batch_size: int,
    scheduler: str | None = None,
    progress: bool = True,
    **inputs: Any,
) -> tuple[dict[float, list[Image.Image]], str]:
    """Every prompt at each guidance scale with `generate`: ({scale: images in prompt order}, the scheduler's class
    name). `scheduler` (a name of pipelines.schedulers) replaces the pipeline's for the run only; `inputs` go to every
    pipeline call (e.g. `cross_attention_kwargs`)."""
    from pipelines.schedulers import make_scheduler

    own_scheduler = pipeline.scheduler
    if scheduler is not None:
        pipeline.scheduler = make_scheduler(scheduler, own_scheduler.config)
    bar = StepBar([pipeline], len(guidance_scales) * num_batches(len(prompts), batch_size) * num_inference_steps,
                  "judging", progress)  # fmt: skip
    images: dict[float, list[Image.Image]] = {}
    try:
        scheduler_name = type(pipeline.scheduler).__name__
        for scale in guidance_scales:
            bar.bar.set_postfix(guidance=guidance_key(scale))
            images[scale] = generate(pipeline, prompts, scale, num_inference_steps, seed, batch_size, bar, **inputs)
    finally:
        bar.close()
        pipeline.scheduler = own_scheduler
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


def plot_accuracy(path: str | Path, scales: Sequence[float], series: dict[str, Sequence[float]], best: float,
                  title: str, subtitle: str = "", ceilings: dict[str, float] | None = None,
                  bold: str | None = None) -> None:  # fmt: skip
    """Accuracy against guidance scale: one line per entry of `series` (the `bold` one thick), each of `ceilings`
    (e.g. the score after the VAE alone) as a dashed line, and the best scale as a dotted one; PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    for label, values in series.items():
        thick = label == bold
        ax.plot(scales, values, marker="s" if thick else "o", linewidth=2.6 if thick else 1.2, label=label,
                **({"color": "black"} if thick else {}))  # fmt: skip
    for label, value in (ceilings or {}).items():
        ax.axhline(value, color="black", linestyle="--", linewidth=1, label=label)
    ax.axvline(best, color="gray", linestyle=":", linewidth=1)
    ax.set_title(f"{title}\n{subtitle}" if subtitle else title, fontsize=9)
    ax.set_xlabel("guidance scale")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xticks(list(scales))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def marked(image: Image.Image, right: bool, side: int = 64, border: int = 3) -> Image.Image:
    """`image` upscaled (nearest, its pixels as they are) to `side`, in a border that is green when right, red when
    wrong: a cell of a judge's right/wrong grid."""
    cell = Image.new("RGB", (side + 2 * border, side + 2 * border), RIGHT if right else WRONG)
    cell.paste(image.convert("RGB").resize((side, side), Image.NEAREST), (border, border))
    return cell
