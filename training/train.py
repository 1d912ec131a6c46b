"""Train a text-to-image latent diffusion model: `main(config)`, run by `accelerate launch scripts/train.py`.

Reads top to bottom: accelerator → seed → data → models → optimizer → prepare → resume → loop → save. Everything the
user can get wrong (config, output_dir, checkpoint, pretrained sources, dataset) is checked before a model is built or
a file written. Validation images and the shapes judge live in training/validation.py.

Randomness that decides *what* a step trains on (the noise ε, the timestep t, caption dropout, the VAE's latent
sample) is drawn from generators seeded by (seed, step, micro-step, position of the sample in the global batch).
That makes a resumed run draw exactly what the uninterrupted run drew, without restoring RNG state, and makes
N processes with per-process batch B draw what one process with batch N·B draws.
"""

from __future__ import annotations

import datetime
import math
import os
import signal
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import InitProcessGroupKwargs, ProjectConfiguration, set_seed
from diffusers import UNet2DConditionModel
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from pipelines.pipeline_latent_diffusion import encode_text, latent_shift

from . import checkpoint as ckpt
from . import hub
from .cli import TrainingError, UsageError
from .config import TrainConfig, config_to_dict, save_config
from .data import ImageCaptionDataset, all_captions, collate_fn, load_train_dataset
from .loss import diffusion_loss, training_target
from .models import (
    check_compatible,
    check_sources,
    freeze,
    load_noise_scheduler,
    load_text_encoder,
    load_tokenizer,
    load_unet,
    load_vae,
)
from .reporting import plot_loss, save_image_grid
from .validation import (
    Models,
    build_pipeline,
    evaluate,
    generate,
    repeat_prompts,
    training_dtype,
    validate,
    write_eval_history,
)

logger = get_logger(__name__)


class NonFiniteLossError(TrainingError):
    pass


def main(config: TrainConfig, dry_run: bool = False) -> Path:
    """Train per `config`; with `dry_run`, build the models and the data, report them, and write nothing."""
    output_dir = Path(config.output_dir)

    # 1. Accelerator (CPU DDP when there is no GPU; see make_accelerator), then the inputs that are quick to check:
    #    the checkpoint to resume (complete, safetensors, written with these settings), the output_dir (a dry run
    #    writes nothing, so one that holds a run is no obstacle to it), the pretrained sources, the Hub.
    accelerator = make_accelerator(config, output_dir)
    if config.allow_tf32:  # TF32 matmuls and convolutions on Ampere+ GPUs (as diffusers' scripts); no effect on CPU
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    resume_from = ckpt.resolve_resume(config.resume_from_checkpoint, output_dir)
    if resume_from is not None:
        ckpt.check_resumable(resume_from, config, accelerator.num_processes)
    if not dry_run:
        _check_output_dir(config, output_dir)
    check_sources(config)
    if config.push_to_hub:  # token, Hub reachable, namespace writable: known now rather than after training
        hub.check_push(config.hub_model_id)

    # 2. Seed: model initialisation and data order are the same on every process and in every rerun.
    set_seed(config.seed)

    # 3. Data (first, because a tokenizer trained from scratch needs the captions), checked before anything is written.
    dataset = load_train_dataset(config)
    dataloader, _ = build_train_dataloader(dataset, config)
    accelerator.wait_for_everyone()  # every rank has checked its input before the main one writes anything
    if accelerator.is_main_process and not dry_run:
        if config.overwrite_output_dir and not config.resume_from_checkpoint:
            # The old run's checkpoints would be what `latest` resumes and what rotation keeps over this run's.
            removed = ckpt.remove_checkpoints(output_dir)
            if removed:
                logger.info(f"overwrite_output_dir: removed the previous run's {', '.join(removed)}")
        output_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, output_dir / "config.yaml")
    accelerator.wait_for_everyone()

    # 4. Models: frozen VAE, text encoder (frozen unless `train_text_encoder`), trainable UNet, our scheduler.
    with accelerator.main_process_first():
        # The main process trains the tokenizer (if needed) and saves it; the others load that exact one.
        tokenizer_dir = output_dir / "tokenizer"
        if not _has_pretrained(config, "tokenizer") and not accelerator.is_main_process and not dry_run:
            tokenizer = load_tokenizer(_with(config, pretrained_tokenizer=str(tokenizer_dir)))
        else:
            tokenizer = load_tokenizer(config, captions=all_captions(dataset))
            if accelerator.is_main_process and not dry_run:
                tokenizer.save_pretrained(tokenizer_dir)
    set_seed(config.seed)  # tokenizer training must not shift model initialisation
    text_encoder = load_text_encoder(config, tokenizer)
    vae = freeze(load_vae(config))
    unet = load_unet(config)
    noise_scheduler = load_noise_scheduler(config)
    check_compatible(config, vae, text_encoder, unet)
    if not config.train_text_encoder:
        freeze(text_encoder)
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        if config.train_text_encoder:
            text_encoder.gradient_checkpointing_enable()

    # Frozen parts run in the mixed-precision dtype; trained parameters stay float32 (autocast handles compute).
    weight_dtype = training_dtype(accelerator)
    frozen = [vae] if config.train_text_encoder else [vae, text_encoder]
    for module in frozen:
        module.to(accelerator.device)
        if weight_dtype != torch.float32:
            module.to(dtype=weight_dtype)

    ema = make_ema(config, unet, accelerator.device)

    # 5. The caches of frozen-part outputs (the data loader was built with the data).
    if dry_run:
        sizes = {n: sum(p.numel() for p in m.parameters()) for n, m in [("unet", unet), ("vae", vae), ("text_encoder", text_encoder)]}
        accelerator.print(
            f"dry run: {len(dataset)} examples, {len(dataloader)} batches/epoch, parameters "
            + ", ".join(f"{n} {v / 1e6:.2f}M" for n, v in sizes.items())
            + f", tokenizer vocab {len(tokenizer)}; nothing was trained or written."
        )
        return output_dir
    latent_cache = text_cache = None
    if config.cache_latents:
        latent_cache = _cache_latent_distributions(dataset, config, vae, accelerator, weight_dtype)
    if config.cache_text_embeddings and not config.train_text_encoder:
        text_cache = _cache_text_embeddings(all_captions(dataset), tokenizer, text_encoder, accelerator)

    # 6. Optimizer and learning-rate schedule. accelerate steps a prepared scheduler once per process per optimizer
    #    step, so warmup and total are counted in "process steps" (as diffusers' training scripts do).
    learning_rate = config.learning_rate
    if config.scale_lr:
        learning_rate *= config.gradient_accumulation_steps * config.train_batch_size * accelerator.num_processes
    params = list(unet.parameters()) + (list(text_encoder.parameters()) if config.train_text_encoder else [])
    optimizer = torch.optim.AdamW(
        params,
        lr=learning_rate,
        betas=(config.adam_beta1, config.adam_beta2),
        weight_decay=config.adam_weight_decay,
        eps=config.adam_epsilon,
        fused=torch.cuda.is_available() or None,
    )
    lr_scheduler = get_scheduler(
        config.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=config.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=config.max_train_steps * accelerator.num_processes,
    )

    # 7. Prepare for (distributed) training.
    if config.train_text_encoder:
        unet, text_encoder, optimizer, dataloader, lr_scheduler = accelerator.prepare(
            unet, text_encoder, optimizer, dataloader, lr_scheduler
        )
    else:
        unet, optimizer, dataloader, lr_scheduler = accelerator.prepare(unet, optimizer, dataloader, lr_scheduler)
    if accelerator.is_main_process and config.report_to != "none":
        accelerator.init_trackers(config.tracker_project_name, config=_flat_hparams(config))

    models = Models(unet, ema, vae, text_encoder, tokenizer, noise_scheduler)

    # 8. Resume: weights, optimizer, LR schedule and EMA from the checkpoint; data position by skipping batches.
    global_step, history, eval_history = 0, [], []
    run_settings = ckpt.fingerprint(config, accelerator.num_processes)  # recorded in every checkpoint
    if resume_from is not None:
        state = ckpt.read_state(resume_from)
        accelerator.load_state(str(resume_from))
        if ema is not None:
            loaded = EMAModel.from_pretrained(str(resume_from / ckpt.EMA_FOLDER), model_cls=UNet2DConditionModel)
            ema.load_state_dict(loaded.state_dict())
            ema.to(accelerator.device)
        global_step, history, eval_history = state["global_step"], state["history"], state.get("eval_history", [])
        accelerator.print(f"Resumed from {resume_from} at step {global_step}")
    elif config.resume_from_checkpoint == "latest":
        accelerator.print(f"No complete checkpoint in {output_dir}; starting from scratch.")

    batches_per_epoch = len(dataloader)
    steps_per_epoch = max(batches_per_epoch // config.gradient_accumulation_steps, 1)
    num_epochs = math.ceil(config.max_train_steps / steps_per_epoch)
    first_epoch = global_step // steps_per_epoch
    resume_batches = (global_step % steps_per_epoch) * config.gradient_accumulation_steps

    total_batch = config.train_batch_size * accelerator.num_processes * config.gradient_accumulation_steps
    logger.info(
        f"Training {config.max_train_steps} steps: {len(dataset)} examples, {accelerator.num_processes} process(es), "
        f"batch {config.train_batch_size}/process x {config.gradient_accumulation_steps} accumulation = {total_batch}"
    )
    # From here on SIGINT / SIGTERM finish the step and checkpoint; the previous handlers come back however `main`
    # ends (a return, NonFiniteLossError, CheckpointWriteError, any exception), or Ctrl-C would be swallowed once
    # in the process that called it.
    stop = _StopSignal()
    try:
        progress = tqdm(total=config.max_train_steps, initial=global_step, desc="train",
                        disable=not accelerator.is_local_main_process)  # fmt: skip

        # 9. The loop.
        step_loss, step_start, consecutive_bad = 0.0, time.perf_counter(), 0
        for epoch in range(first_epoch, num_epochs):
            if global_step >= config.max_train_steps:  # resumed from the final checkpoint: only the saving is left
                break
            epoch_loader = dataloader
            if epoch == first_epoch and resume_batches:
                epoch_loader = accelerator.skip_first_batches(dataloader, resume_batches)
            # Through accelerate's loader, not our sampler: at every __iter__ it re-sets the sampler's epoch from its
            # own iteration counter, which after a resume would otherwise restart at 0 and replay epoch 0's order.
            epoch_loader.set_epoch(epoch)
            micro_step = resume_batches if epoch == first_epoch else 0
            for batch in epoch_loader:
                batch_size = len(batch["captions"])
                generators = sample_generators(config.seed, global_step, micro_step, accelerator, batch_size)
                micro_step += 1
                with accelerator.accumulate(unet):
                    latents = _encode_latents(batch, vae, latent_cache, generators, weight_dtype)
                    captions = _drop_captions(batch["captions"], config.cfg_dropout, generators)
                    encoder_hidden_states = _encode_text(captions, tokenizer, text_encoder, text_cache, accelerator)

                    noise = torch.stack([torch.randn(latents.shape[1:], generator=g) for g in generators])
                    if config.noise_offset:  # Guttenberg 2023, "Diffusion with offset noise": per-channel DC shift
                        noise += config.noise_offset * torch.stack(
                            [torch.randn(latents.shape[1], 1, 1, generator=g) for g in generators]
                        )
                    num_train_timesteps = noise_scheduler.config.num_train_timesteps
                    timesteps = torch.cat(
                        [torch.randint(0, num_train_timesteps, (1,), generator=g) for g in generators]
                    )
                    noise, timesteps = noise.to(latents.device), timesteps.to(latents.device)
                    noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)  # Eq. 4
                    target = training_target(noise_scheduler, latents, noise, timesteps)

                    model_pred = unet(noisy_latents, timesteps, encoder_hidden_states).sample
                    loss = diffusion_loss(model_pred, target, timesteps, noise_scheduler, config.snr_gamma)

                    accelerator.backward(loss)
                    ckpt.kill_point("step", global_step + 1, accelerator.process_index)
                    finite, grad_norm = guarded_step(accelerator, params, loss, optimizer, lr_scheduler, config)
                    step_loss += accelerator.reduce(loss.detach().float(), reduction="mean").item()

                if not accelerator.sync_gradients:
                    continue

                # One optimizer step is complete (all accumulation micro-steps done).
                if not finite:
                    consecutive_bad += 1
                    handle_non_finite(config, output_dir, global_step + 1, step_loss, grad_norm, consecutive_bad,
                                      learning_rate_key="learning_rate")  # fmt: skip
                else:
                    consecutive_bad = 0
                    if ema is not None:
                        ema.step(unet.parameters())
                global_step += 1
                micro_step = 0 if micro_step >= batches_per_epoch else micro_step
                mean_loss = step_loss / config.gradient_accumulation_steps
                elapsed = time.perf_counter() - step_start
                logs = {
                    "loss": mean_loss,
                    "lr": lr_scheduler.get_last_lr()[0],
                    "grad_norm": float(grad_norm),
                    "images_per_sec": total_batch / max(elapsed, 1e-9),
                }
                history.append({"step": global_step, "loss": mean_loss, "lr": logs["lr"]})
                accelerator.log(logs, step=global_step)
                progress.update(1)
                progress.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{logs['lr']:.2e}")
                step_loss, step_start = 0.0, time.perf_counter()

                # Validation and the judge before the checkpoint: a checkpoint at step N means all of step N's work is
                # done, so a run killed in between redoes them instead of resuming past them.
                done = global_step >= config.max_train_steps
                if config.validation_steps and global_step % config.validation_steps == 0 and config.validation_prompts:
                    validate(config, accelerator, models, global_step)
                if config.eval_steps and (global_step % config.eval_steps == 0 or done):
                    evaluate(config, accelerator, models, global_step, eval_history)
                stopping = stop.requested(accelerator)
                periodic = config.checkpointing_steps and global_step % config.checkpointing_steps == 0
                if periodic or (stopping and not done):
                    ckpt.save_checkpoint(
                        accelerator,
                        output_dir,
                        global_step,
                        {"global_step": global_step, "history": history, "eval_history": eval_history,
                         "config": run_settings},
                        ema=ema if accelerator.is_main_process else None,
                        limit=config.checkpoints_total_limit,
                    )
                if stopping and not done:
                    progress.close()
                    accelerator.print(
                        f"Stopped by signal at step {global_step}; checkpoint saved. Resume with: "
                        f"resume_from_checkpoint=latest (same config and output_dir)."
                    )
                    accelerator.end_training()
                    return output_dir
                if done:
                    break
            if global_step >= config.max_train_steps:
                break
        progress.close()

        # 10. Save the EMA pipeline as a self-contained folder (loads with LatentDiffusionPipeline.from_pretrained, or
        #     without sculpt with DiffusionPipeline.from_pretrained(..., trust_remote_code=True)), samples, plots, the
        #     model card; then push it when asked, once the run is complete (a failed push loses nothing).
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            pipeline = build_pipeline(accelerator, models, use_ema=True)
            pipeline.save_pretrained(output_dir)
            ckpt.kill_point("save", global_step)
            images = generate(pipeline, config) if config.validation_prompts else []
            if images:
                save_image_grid(images, output_dir / "samples.png", captions=repeat_prompts(config))
            plot_loss(history, output_dir / "loss.png")
            _write_history(history, output_dir / "loss_history.json")
            if eval_history:
                write_eval_history(eval_history, output_dir)
            hub.write_model_card(output_dir, config, images, accelerator.num_processes)
            accelerator.print(f"Saved the trained pipeline to {output_dir}")
        accelerator.wait_for_everyone()
        accelerator.end_training()
    finally:
        stop.restore()
    if config.push_to_hub and accelerator.is_main_process:
        url = hub.push_folder(output_dir, config.hub_model_id, private=config.hub_private)
        accelerator.print(f"Pushed it to {url}")
    return output_dir


# ---------------------------------------------------------------------------------------------------------------------
# Data order
# ---------------------------------------------------------------------------------------------------------------------
class EpochSampler(torch.utils.data.Sampler):
    """A permutation of the dataset per epoch, drawn from (seed, epoch) alone, so every process and every resumed
    run agrees on the order. `set_epoch` also moves the dataset's per-sample augmentation stream."""

    def __init__(self, dataset: ImageCaptionDataset, seed: int, shuffle: bool = True):
        self.dataset, self.seed, self.shuffle, self.epoch = dataset, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self):
        if not self.shuffle:
            return iter(range(len(self.dataset)))
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(len(self.dataset), generator=generator).tolist())


class _WithIndex(torch.utils.data.Dataset):
    def __init__(self, dataset):
        self.dataset = dataset

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        return {**self.dataset[index], "index": index}


def _collate_with_index(examples: list[dict]) -> dict:
    return {**collate_fn(examples), "indices": [example["index"] for example in examples]}


def build_train_dataloader(dataset, config, batch_size: int | None = None, shuffle: bool = True, augment: bool = True):
    """(DataLoader, EpochSampler) over `dataset` with the config's transforms; batches carry `pixel_values`,
    `captions` and dataset `indices`. `augment=False` gives the deterministic view (center crop, no flip)."""
    torch_dataset = ImageCaptionDataset.from_config(dataset, config, train=augment)
    if not augment:
        torch_dataset.center_crop, torch_dataset.random_flip = True, False
    torch_dataset = _WithIndex(torch_dataset)
    batch_size = batch_size or config.train_batch_size
    if shuffle and len(torch_dataset) < batch_size:
        raise ValueError(
            f"`train_batch_size`: {batch_size} is larger than the dataset ({len(torch_dataset)} examples); "
            f"lower it or add data."
        )
    sampler = EpochSampler(torch_dataset, config.seed, shuffle=shuffle)
    loader = torch.utils.data.DataLoader(
        torch_dataset,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=_collate_with_index,
        num_workers=config.dataloader_num_workers,
        drop_last=shuffle,  # every training step sees a full batch, so per-process batches line up under DDP
    )
    return loader, sampler


# ---------------------------------------------------------------------------------------------------------------------
# Step helpers
# ---------------------------------------------------------------------------------------------------------------------
def make_accelerator(config, output_dir: Path) -> Accelerator:
    """An Accelerator for `config`. It asks for CPU explicitly when there is no GPU: otherwise
    `accelerate launch --multi_gpu` on a CPU machine silently runs N independent single-process trainings
    instead of one DDP (gloo) run. A launch that still ends up with fewer processes than WORLD_SIZE is refused."""
    accelerator = Accelerator(
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        mixed_precision=config.mixed_precision,
        log_with=None if config.report_to == "none" else config.report_to,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / config.logging_dir)),
        cpu=not torch.cuda.is_available(),
        kwargs_handlers=[InitProcessGroupKwargs(timeout=datetime.timedelta(seconds=config.ddp_timeout))],
    )
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size != accelerator.num_processes:
        raise UsageError(
            f"WORLD_SIZE={world_size} but accelerate set up {accelerator.num_processes} process(es), so they would "
            f"train independently. Run: accelerate launch --multi_gpu --num_processes {world_size} scripts/train.py ..."
        )
    if config.num_processes is not None and config.num_processes != accelerator.num_processes:
        raise UsageError(
            f"`num_processes`: {config.num_processes} but this launch runs {accelerator.num_processes} process(es). "
            f"Run: accelerate launch --multi_gpu --num_processes {config.num_processes} scripts/train.py ... (or set "
            f"num_processes={accelerator.num_processes}, which changes the effective batch)."
        )
    return accelerator


def sample_generators(seed: int, step: int, micro_step: int, accelerator, batch_size: int) -> list[torch.Generator]:
    """One generator per sample, seeded by where the sample sits in the global batch of this (step, micro-step).
    accelerate gives process r the r-th slice of each group of per-process batches, so position r·B + j here is
    position r·B + j of one process's batch of N·B."""
    first = accelerator.process_index * batch_size
    return [
        torch.Generator().manual_seed(hash((seed, step, micro_step, first + j)) % (2**63))
        for j in range(batch_size)
    ]


def _drop_captions(captions: list[str], p: float, generators: list[torch.Generator]) -> list[str]:
    """CFG training (Ho & Salimans 2022, arXiv 2207.12598): with probability p a caption becomes "", the exact
    unconditional input the pipeline encodes at inference."""
    return ["" if torch.rand(1, generator=g).item() < p else c for c, g in zip(captions, generators)]


def _encode_text(captions, tokenizer, text_encoder, cache, accelerator) -> torch.Tensor:
    """The captions' CLIP embeddings exactly as the pipeline encodes prompts (`encode_text`), or from the cache."""
    if cache is not None:
        return torch.stack([cache[c] for c in captions]).to(accelerator.device)
    # A trained text encoder is DDP-wrapped and called through the wrapper so its gradients are synchronised.
    config = accelerator.unwrap_model(text_encoder).config
    with torch.set_grad_enabled(text_encoder.training):
        return encode_text(tokenizer, text_encoder, captions, accelerator.device, text_encoder_config=config)


def _encode_latents(batch, vae, cache, generators, weight_dtype) -> torch.Tensor:
    """z ~ q(z | x) scaled to unit variance by the VAE's `scaling_factor` (LDM Sec. 4.3.2)."""
    if cache is not None:
        mean, std = (torch.stack([cache[i][k] for i in batch["indices"]]) for k in (0, 1))
        eps = torch.stack([torch.randn(mean.shape[1:], generator=g) for g in generators])
        latents = mean + std * eps
    else:
        with torch.no_grad():
            posterior = vae.encode(batch["pixel_values"].to(vae.device, weight_dtype)).latent_dist
            eps = torch.stack([torch.randn(posterior.mean.shape[1:], generator=g) for g in generators])
            latents = posterior.mean + posterior.std * eps.to(posterior.mean)
    shift = latent_shift(vae.config) or 0.0
    return ((latents.float() - shift) * vae.config.scaling_factor).to(vae.device)


def make_ema(config, model, device):
    """The EMA of `model`'s weights (with warmup, as configured), or None when `use_ema` is off."""
    if not config.use_ema:
        return None
    ema = EMAModel(
        model.parameters(),
        decay=config.ema_decay,
        use_ema_warmup=config.ema_warmup,
        inv_gamma=config.ema_inv_gamma,
        power=config.ema_power,
        model_cls=type(model),
        model_config=model.config,
    )
    ema.to(device)
    return ema


def guarded_step(accelerator, params, loss, optimizer, lr_scheduler, config) -> tuple[bool, torch.Tensor | None]:
    """Clip and apply the update, unless the loss or gradient is NaN/Inf on any rank: then the bad gradients are
    dropped and neither the weights nor the LR schedule move. Returns (finite, grad_norm); on accumulation
    micro-steps (no gradient sync yet) there is nothing to check: (True, None)."""
    finite, grad_norm = True, None
    if accelerator.sync_gradients:
        grad_norm = accelerator.clip_grad_norm_(params, config.max_grad_norm)
        finite = _all_finite(accelerator, loss, grad_norm)
    if finite:
        optimizer.step()
        lr_scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return finite, grad_norm


def handle_non_finite(config, output_dir: Path, step: int, loss: float, grad_norm, in_a_row: int,
                      learning_rate_key: str) -> None:  # fmt: skip
    """A step whose loss or gradient was NaN/Inf (its update was not applied): stop per `non_finite_loss`, naming
    the step and the checkpoint that is kept, or log it and go on."""
    message = (
        f"Non-finite loss or gradient at step {step} (loss={loss:.4g}, grad_norm={float(grad_norm):.4g}); "
        f"the update was not applied."
    )
    if config.non_finite_loss == "stop" or in_a_row >= config.max_consecutive_non_finite:
        why = ("non_finite_loss=stop" if config.non_finite_loss == "stop" else
               f"{in_a_row} in a row, max_consecutive_non_finite={config.max_consecutive_non_finite}")  # fmt: skip
        last = ckpt.list_checkpoints(output_dir)
        kept = f"the last good checkpoint, {last[-1].name}, is untouched. " if last else "no checkpoint was written yet. "
        raise NonFiniteLossError(
            f"{message} Training stopped ({why}); {kept}Lower {learning_rate_key}, check the data of that step, or "
            f"set non_finite_loss=skip."
        )
    logger.warning(message + f" Skipping it ({in_a_row} in a row).")


def _all_finite(accelerator, loss: torch.Tensor, grad_norm) -> bool:
    flag = torch.tensor(
        [float(torch.isfinite(loss.detach()).all()) * float(torch.isfinite(torch.as_tensor(grad_norm)).all())],
        device=accelerator.device,
    )
    return bool(accelerator.gather(flag).min().item() == 1.0)


@torch.no_grad()
def _cache_latent_distributions(dataset, config, vae, accelerator, weight_dtype) -> list[tuple[torch.Tensor, ...]]:
    """Mean and std of q(z | x) for every example, computed once; each step still samples z afresh from them."""
    loader, _ = build_train_dataloader(dataset, config, shuffle=False, augment=False)
    cache = {}
    for batch in tqdm(loader, desc="cache latents", disable=not accelerator.is_local_main_process):
        posterior = vae.encode(batch["pixel_values"].to(vae.device, weight_dtype)).latent_dist
        for i, mean, std in zip(batch["indices"], posterior.mean.float().cpu(), posterior.std.float().cpu()):
            cache[i] = (mean, std)
    return cache


@torch.no_grad()
def _cache_text_embeddings(captions, tokenizer, text_encoder, accelerator) -> dict[str, torch.Tensor]:
    unique = sorted(set(captions) | {""})
    cache = {}
    for start in range(0, len(unique), 64):
        chunk = unique[start : start + 64]
        embeddings = encode_text(tokenizer, text_encoder, chunk, text_encoder.device).float().cpu()
        for caption, embedding in zip(chunk, embeddings):
            cache[caption] = embedding
    return cache


# ---------------------------------------------------------------------------------------------------------------------
# Small utilities
# ---------------------------------------------------------------------------------------------------------------------
def _check_output_dir(config, output_dir: Path) -> None:
    """Refuse to train into a folder that holds another run, unless told to overwrite or to resume it (`latest` with
    no checkpoint yet is a resume too: a run killed before its first checkpoint restarts from scratch)."""
    if config.resume_from_checkpoint or config.overwrite_output_dir or not output_dir.exists():
        return
    markers = [p.name for p in output_dir.iterdir() if p.name in ("model_index.json", "config.yaml")]
    markers += [p.name for p in ckpt.list_checkpoints(output_dir)]
    if markers:
        raise ValueError(
            f"`output_dir`: {str(output_dir)!r} already holds a run ({', '.join(sorted(markers)[:3])}). "
            f"Set `overwrite_output_dir=true` to replace it, `resume_from_checkpoint=latest` to continue it, "
            f"or choose another `output_dir`."
        )


def _has_pretrained(config, part: str) -> bool:
    return bool(getattr(config, f"pretrained_{part}", None) or config.pretrained_model_name_or_path)


def _with(config, **changes):
    import dataclasses

    return dataclasses.replace(config, **changes)


def _flat_hparams(config) -> dict:
    """tensorboard's hparams take scalars and strings only."""
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in config_to_dict(config).items()}


def _write_history(history: list[dict], path: Path) -> None:
    import json

    path.write_text(json.dumps(history, indent=1))


class _StopSignal:
    """SIGINT / SIGTERM ask the run to finish its current step, save a checkpoint and exit cleanly. `restore` (in a
    `finally`) puts the previous handlers back, so that Ctrl-C interrupts a Python session again once `main` has
    returned or raised."""

    def __init__(self):
        self.flag, self.previous = False, {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self.previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. some notebook runners): keep default handling
                pass

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame):
        if self.flag:  # second signal: stop now
            raise KeyboardInterrupt
        self.flag = True

    def requested(self, accelerator) -> bool:
        flag = torch.tensor([float(self.flag)], device=accelerator.device)
        return bool(accelerator.gather(flag).max().item() > 0)
