"""What the judges share: their argument checks, generating a list of prompts with per-image seeds, in-painting
them, and round trips through the pipeline's VAE (the ceiling of any score, whatever the UNet)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image


def guidance_key(guidance_scale: float) -> str:
    """How a guidance scale names its entry in the metrics: 1.0 → "1", 2.5 → "2.5" (as the shapes judge)."""
    return f"{guidance_scale:g}"


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


def generate(
    pipeline, prompts: Sequence[str], guidance_scale: float, num_inference_steps: int, seed: int, batch_size: int,
    bar: StepBar, **inputs: Any,
) -> list[Image.Image]:
    """`pipeline(prompt=...)` for every prompt, in near-equal batches of at most `batch_size`; image i is drawn from
    the generator seeded `seed + i`, so it does not depend on the batching and the guidance scales (and in-painting
    with and without a caption) are compared on the same noise. `inputs` go to every call (`image`, `mask_image`:
    one for all prompts, or a list with one per prompt)."""
    size = pipeline.default_height_width()
    batches = np.array_split(np.arange(len(prompts)), math.ceil(len(prompts) / batch_size))
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


def best_scale(accuracy: dict[str, float], scales: Sequence[float]) -> float:
    """The scale with the highest accuracy; a tie goes to the smaller scale (closer to the model's own
    distribution), as the shapes judge does."""
    return max(scales, key=lambda g: (accuracy[guidance_key(g)], -g))


def as_rgb_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """(H, W, 3) float64 in 0..255 from a PIL image, a uint8 array, or a float array in [0, 1] (a pipeline's "np")."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float64)
    pixels = np.asarray(image)
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[..., None], 3, axis=-1)
    if pixels.ndim != 3 or pixels.shape[-1] != 3:
        raise ValueError(f"`image`: an array of shape {pixels.shape}; expected (height, width, 3) RGB or (height, width).")
    if np.issubdtype(pixels.dtype, np.floating):
        return np.clip(pixels.astype(np.float64), 0.0, 1.0) * 255.0
    return pixels.astype(np.float64)

