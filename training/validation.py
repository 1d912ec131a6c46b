"""What a training run shows while it trains, on the main process with the EMA weights: images of fixed prompts
(`validate`) and the shapes judge's accuracies (`run_judge`, training/judges/shapes.py). Both swap the EMA weights into the
UNet and the training weights back afterwards (`ema_pipeline`), sample in float32, and make the other ranks wait.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pipelines import LatentDiffusionPipeline

from . import checkpoint as ckpt
from .reporting import save_image_grid
from .run import log_images, wait_for_main_process
from .sharded import unsharded

EVAL_HISTORY = "eval_history.json"


@dataclass
class Models:
    """The parts a pipeline is built from during training (`unet` and a trained `text_encoder` as `prepare` returned
    them, possibly wrapped for DDP)."""

    unet: Any
    ema: Any  # diffusers EMAModel, or None
    vae: Any
    text_encoder: Any
    tokenizer: Any
    scheduler: Any


def training_dtype(accelerator) -> torch.dtype:
    """The dtype frozen parts run in: the mixed-precision one; trained parameters stay float32."""
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)


def build_pipeline(accelerator, models: Models, use_ema: bool) -> LatentDiffusionPipeline:
    """A pipeline of the current weights (the EMA ones copied in with `use_ema`), its frozen parts cast to float32."""
    unet = accelerator.unwrap_model(models.unet)
    if use_ema and models.ema is not None:
        models.ema.copy_to(unet.parameters())
    text_encoder = accelerator.unwrap_model(models.text_encoder)
    for module in (models.vae, text_encoder):  # sampling runs in float32, whatever the training dtype of frozen parts
        if module.dtype != torch.float32:
            module.to(torch.float32)
    return LatentDiffusionPipeline(
        vae=models.vae, text_encoder=text_encoder, tokenizer=models.tokenizer, unet=unet, scheduler=models.scheduler
    )


@contextlib.contextmanager
def ema_pipeline(config, accelerator, models: Models):
    """A pipeline with the EMA weights in its UNet and every model in eval mode; on exit the training weights, modes
    and dtypes are back as they were."""
    unet = accelerator.unwrap_model(models.unet)
    text_encoder = accelerator.unwrap_model(models.text_encoder)
    modes = [(module, module.training) for module in (unet, text_encoder)]
    if models.ema is not None:
        models.ema.store(unet.parameters())
    try:
        pipeline = build_pipeline(accelerator, models, use_ema=True)
        for module, _ in modes:
            module.eval()
        yield pipeline
    finally:
        if models.ema is not None:
            models.ema.restore(unet.parameters())
        for module, training in modes:
            module.train(training)
        dtype = training_dtype(accelerator)
        if dtype != torch.float32:  # the frozen parts go back to the training dtype
            models.vae.to(dtype=dtype)
            if not config.train_text_encoder:
                text_encoder.to(dtype=dtype)


def repeat_prompts(config) -> list[str]:
    return [p for p in config.validation_prompts for _ in range(config.num_validation_images)]


def sampling_seed(config) -> int:
    return config.validation_seed if config.validation_seed is not None else config.seed


def extra_sizes(config) -> list[tuple[int, int]]:
    """The (width, height) sizes of `validation_resolutions`, sampled besides the square `resolution`."""
    from .buckets import parse_size

    return [parse_size(text, "validation_resolutions") for text in config.validation_resolutions]


def size_suffix(size: tuple[int, int] | None) -> str:
    return "" if size is None else f"_{size[0]}x{size[1]}"


@torch.no_grad()
def generate(pipeline, config, size: tuple[int, int] | None = None) -> list:
    """The validation prompts, `num_validation_images` each, from one generator seeded by `sampling_seed`, at the
    square `resolution` or at `size` (width, height)."""
    width, height = size or (config.resolution, config.resolution)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline(
        repeat_prompts(config),
        num_inference_steps=config.num_inference_steps,
        guidance_scale=config.guidance_scale,
        generator=torch.Generator().manual_seed(sampling_seed(config)),
        height=height,
        width=width,
    ).images


def validate(config, accelerator, models: Models, step: int) -> None:
    """Fixed prompts, fixed seed, EMA weights → validation/step-<step>.png (and tensorboard)."""
    models = unsharded(accelerator, models)  # under FSDP, plain models on the main process (all processes call it)
    if accelerator.is_main_process:
        sizes = [None, *extra_sizes(config)]
        with ema_pipeline(config, accelerator, models) as pipeline:
            images = [generate(pipeline, config, size) for size in sizes]
            ckpt.kill_point("validation", step)
        for size, at_size in zip(sizes, images):
            path = Path(config.output_dir) / "validation" / f"step-{step:06d}{size_suffix(size)}.png"
            grid = save_image_grid(at_size, path, captions=repeat_prompts(config))
            log_images(accelerator, f"validation{size_suffix(size)}", grid, step)
    wait_for_main_process(accelerator)


def run_judge(config, accelerator, models: Models, step: int, history: list[dict]) -> None:
    """The shapes judge on the EMA weights: every caption of the grammar at each of `eval_guidance_scales`, read back
    off the pixels. Logs each accuracy as eval/<scale>/<attribute>, appends {"step", "accuracy",
    "best_guidance_scale"} to `history` (kept in checkpoints, so a resumed run's history equals an uninterrupted
    one's) and writes it to eval_history.json. Main process only; the others wait."""
    from .judges.shapes import evaluate_pipeline

    models = unsharded(accelerator, models)
    if accelerator.is_main_process:
        with ema_pipeline(config, accelerator, models) as pipeline:
            metrics = evaluate_pipeline(
                pipeline,
                guidance_scales=config.eval_guidance_scales,
                per_caption=config.eval_per_caption,
                num_inference_steps=config.eval_num_inference_steps,
                seed=sampling_seed(config),
                progress=accelerator.is_local_main_process,
                colors=config.shapes_colors or None,
                backgrounds=config.shapes_backgrounds or None,
            )
        # Not metrics["seconds"]: the history must not depend on how busy the machine was.
        history.append({"step": step, "accuracy": metrics["accuracy"],
                        "best_guidance_scale": metrics["best_guidance_scale"]})  # fmt: skip
        accelerator.log(
            {f"eval/{scale}/{attribute}": value for scale, accuracy in metrics["accuracy"].items()
             for attribute, value in accuracy.items()},
            step=step,
        )  # fmt: skip
        best = metrics["best_accuracy"]["all"]
        accelerator.print(f"step {step}: shapes judge, all four attributes right: {best:.1%} "
                          f"(guidance {metrics['best_guidance_scale']:g})")  # fmt: skip
        write_eval_history(history, Path(config.output_dir))
    wait_for_main_process(accelerator)


def write_eval_history(history: list[dict], output_dir: Path) -> None:
    (output_dir / EVAL_HISTORY).write_text(json.dumps(history, indent=1))
