"""Stage 2 of latent diffusion: train the text-conditioned UNet, `main(config)`, run by
`accelerate launch scripts/train.py`.

Reads top to bottom: accelerator → seed → data → models → optimizer → prepare → resume → loop → save. Everything the
user can get wrong (config, output_dir, checkpoint, pretrained sources, dataset) is checked before a model is built or
a file written. How a run starts, resumes, steps, checkpoints and stops is training/run.py's, shared with the VAE stage
(training/train_vae.py); validation images and the judge live in training/validation.py; latents in and out of the
VAE are pipelines/latents.py's, the same code the pipelines sample with. `training_mode: lora` trains adapters on a
frozen base instead of the UNet itself: their setup, checkpoints and file are training/lora.py's, DreamBooth's class
images training/dreambooth.py's; the loop is the same loop.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import datasets
import torch
from accelerate.logging import get_logger
from accelerate.utils import gather_object, set_seed
from tqdm.auto import tqdm

from pipelines.latents import encode_latents, normalize_latents, vae_scale_factor
from pipelines.pipeline_latent_diffusion import encode_text

from . import checkpoint as ckpt
from . import dreambooth, hub, lora, run, sharded
from .config import TrainConfig, config_to_dict
from .data import all_captions, build_train_dataloader
from .latent_cache import cached_loader, prepare_cache
from .loss import diffusion_loss, training_target
from .models import (
    bucket_multiple,
    check_compatible,
    check_sources,
    freeze,
    load_noise_scheduler,
    load_text_encoder,
    load_tokenizer,
    load_unet,
    load_vae,
    set_attention_processor,
)
from .reporting import plot_loss, save_image_grid
from .streaming import check_resume
from .validation import (
    Models,
    build_pipeline,
    extra_sizes,
    generate,
    repeat_prompts,
    run_judge,
    size_suffix,
    training_dtype,
    validate,
    write_eval_history,
)

logger = get_logger(__name__)

SAVED_RUN_FILES = ("model_index.json", "config.yaml")  # what marks an output_dir as holding a run


def main(config: TrainConfig, dry_run: bool = False) -> Path:
    """Train per `config`; with `dry_run`, build the models and the data, report them, and write nothing."""
    output_dir = Path(config.output_dir)

    # 1. Accelerator (CPU DDP when there is no GPU; see run.make_accelerator), then the inputs that are quick to
    #    check: the checkpoint to resume (complete, safetensors, written with these settings), the output_dir (a dry
    #    run writes nothing, so one that holds a run is no obstacle to it), the pretrained sources, the Hub.
    accelerator = run.make_accelerator(config, output_dir)
    if config.allow_tf32:  # TF32 matmuls and convolutions on Ampere+ GPUs (as diffusers' scripts); no effect on CPU
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    resume_from = ckpt.resolve_resume(config.resume_from_checkpoint, output_dir)
    if resume_from is not None:
        ckpt.check_resumable(resume_from, config, accelerator.num_processes)
    if not dry_run:
        run.check_output_dir(config, output_dir, "output_dir", SAVED_RUN_FILES)
    check_sources(config)
    lora.check_lora_config(config)  # with training_mode lora: peft is there, the target modules exist
    dreambooth.check_class_images(config)  # without class_prompts: class_data_dir holds the captioned images
    if config.push_to_hub:  # token, Hub reachable, namespace writable: known now rather than after training
        hub.check_push(config.hub_model_id)

    # 2. Seed: model initialisation and data order are the same on every process and in every rerun.
    set_seed(config.seed)

    # 3. Data (first, because a tokenizer trained from scratch needs the captions), checked before anything is written:
    #    loaded (training/data.py), or with `streaming` its shards, read as the batches need them (streaming.py).
    #    With cached latents a step needs no pixels: the loader skips decoding and transforming every image.
    dataset, dataloader = run.train_data(config, accelerator, multiple=bucket_multiple(config),
                                         pixels=not config.cache_latents)  # fmt: skip
    if dry_run:
        accelerator.wait_for_everyone()
    else:  # every rank has checked its input before the main one writes anything
        run.start_output_dir(accelerator, config, output_dir, "config.yaml")
    prior_from = None  # DreamBooth: the dataset's rows from here on are class images, paired into every batch
    if config.with_prior_preservation and not dry_run:
        class_images = dreambooth.class_images(config, accelerator).cast(dataset.features)
        prior_from, dataset = len(dataset), datasets.concatenate_datasets([dataset, class_images])
        dataloader, _ = build_train_dataloader(dataset, config, num_processes=accelerator.num_processes,
                                               multiple=bucket_multiple(config), prior_from=prior_from)  # fmt: skip

    # 4. Models: frozen VAE, text encoder (frozen unless `train_text_encoder`), trainable UNet (or, with LoRA, a
    #    frozen UNet and text encoder with trainable adapters), our scheduler.
    with run.main_process_first(accelerator):
        # The main process trains the tokenizer (if needed) and saves it; the others load that exact one.
        tokenizer_dir = output_dir / "tokenizer"
        if not config.is_pretrained("tokenizer") and not accelerator.is_main_process and not dry_run:
            tokenizer = load_tokenizer(dataclasses.replace(config, pretrained_tokenizer=str(tokenizer_dir)))
        else:
            tokenizer = load_tokenizer(config, captions=all_captions(dataset))
            if accelerator.is_main_process and not dry_run and not config.is_pretrained("tokenizer"):
                tokenizer.save_pretrained(tokenizer_dir)
    set_seed(config.seed)  # tokenizer training must not shift model initialisation
    text_encoder = load_text_encoder(config, tokenizer)
    vae = freeze(load_vae(config))
    unet = load_unet(config)
    set_attention_processor(unet, config.attention_processor)
    noise_scheduler = load_noise_scheduler(config)
    check_compatible(config, vae, text_encoder, unet)
    if not config.train_text_encoder:
        freeze(text_encoder)
    adapters = config.training_mode == "lora"
    if adapters:
        lora.add_adapters(config, unet, text_encoder)  # freezes both bases first
        unet.train()  # for lora_dropout; the base has no other train-only layers
        if config.train_text_encoder_lora:
            text_encoder.train()
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        if config.train_text_encoder:
            text_encoder.gradient_checkpointing_enable()

    # Frozen parts run in the mixed-precision dtype; trained parameters stay float32 (autocast handles compute).
    weight_dtype = training_dtype(accelerator)
    frozen = ([vae] if config.train_text_encoder else [vae, text_encoder]) + ([unet] if adapters else [])
    for module in frozen:
        module.to(accelerator.device)
        if weight_dtype != torch.float32:
            module.to(dtype=weight_dtype)
    if adapters:  # the frozen bases in the mixed-precision dtype, their adapters in float32
        lora.cast_adapters([unet, text_encoder], torch.float32)

    ema = lora.make_adapter_ema(config, unet, accelerator.device) if adapters else run.make_ema(config, unet,
                                                                                               accelerator.device)

    # 5. The caches of frozen-part outputs (the data loader was built with the data).
    if dry_run:
        parts = [("unet", unet), ("vae", vae), ("text_encoder", text_encoder)]
        sizes = {name: sum(p.numel() for p in module.parameters()) for name, module in parts}
        trained = sum(p.numel() for _, module in parts for p in module.parameters() if p.requires_grad)
        accelerator.print(
            f"dry run: {len(dataset)} examples, {len(dataloader)} batches/epoch, parameters "
            + ", ".join(f"{n} {v / 1e6:.2f}M" for n, v in sizes.items()) + f" ({trained:,} trained)"
            + f", tokenizer vocab {len(tokenizer)}; nothing was trained or written."
        )
        return output_dir
    latent_cache = text_cache = None
    cache_text = config.cache_text_embeddings and not (config.train_text_encoder or config.train_text_encoder_lora)
    if config.cache_latents and config.latent_cache == "disk":  # training/latent_cache.py; batches come from it now
        text_parts = (tokenizer, text_encoder) if cache_text else (None, None)  # caption embeddings cached too
        disk_cache = prepare_cache(config, dataset, vae, accelerator, weight_dtype, *text_parts,
                                   multiple=bucket_multiple(config))  # fmt: skip
        dataloader = cached_loader(disk_cache, dataset, config, accelerator, multiple=bucket_multiple(config))
        text_cache = {"": disk_cache.empty_embedding} if cache_text else None  # the dropped captions'
    elif config.cache_latents:
        latent_cache = cache_latent_distributions(dataset, config, vae, accelerator, weight_dtype)
    if cache_text and text_cache is None:
        text_cache = cache_text_embeddings(all_captions(dataset), tokenizer, text_encoder, accelerator)

    # 6. Optimizer and learning-rate schedule.
    learning_rate = config.learning_rate
    if config.scale_lr:
        learning_rate *= config.gradient_accumulation_steps * config.train_batch_size * accelerator.num_processes
    # The trained parameters: the whole UNet (and text encoder), or only the adapters of the frozen ones.
    params = [p for module in (unet, text_encoder) for p in module.parameters() if p.requires_grad]
    optimizer = run.make_optimizer(config, params, learning_rate)
    lr_scheduler = run.make_lr_scheduler(config, optimizer, accelerator.num_processes, config.max_train_steps)

    # 7. Prepare for (distributed) training.
    if config.train_text_encoder or config.train_text_encoder_lora:
        unet, text_encoder, optimizer, dataloader, lr_scheduler = accelerator.prepare(
            unet, text_encoder, optimizer, dataloader, lr_scheduler
        )
    else:
        unet, optimizer, dataloader, lr_scheduler = accelerator.prepare(unet, optimizer, dataloader, lr_scheduler)
    params = [p for group in optimizer.param_groups for p in group["params"]]  # FSDP's prepare makes them shards
    forward = run.compiled_forward(config, accelerator, unet)  # the UNet itself, or its compiled training forward
    if adapters:  # checkpoints hold the adapters (pytorch_lora_weights.safetensors), not the frozen UNet
        lora.register_checkpoint_hooks(accelerator, unet, text_encoder, config.train_text_encoder_lora)
    if accelerator.is_main_process and config.report_to != "none":
        accelerator.init_trackers(config.tracker_project_name, config=flat_hparams(config))

    models = Models(unet, ema, vae, text_encoder, tokenizer, noise_scheduler)

    # 8. Resume: weights, optimizer, LR schedule and EMA from the checkpoint; data position by skipping batches.
    state = run.resume(accelerator, config, resume_from, ema, ckpt.EMA_FOLDER, output_dir)
    sharded.shard_ema(accelerator, ema, unet)  # under FSDP the EMA is kept in shards like the UNet's weights
    data_record = dataset.record() if config.streaming else None  # a stream's shards: a resume needs the same ones
    if config.streaming:
        check_resume(state, dataset)
    global_step, history = state.get("global_step", 0), state.get("history", [])
    eval_history = state.get("eval_history", [])
    run_settings = ckpt.fingerprint(config, accelerator.num_processes)  # recorded in every checkpoint
    plan = run.EpochPlan.make(len(dataloader), config.gradient_accumulation_steps, config.max_train_steps, global_step)

    per_process = dreambooth.images_per_batch(config)  # with prior preservation, training + class images
    total_batch = per_process * accelerator.num_processes * config.gradient_accumulation_steps
    logger.info(
        f"Training {config.max_train_steps} steps: {len(dataset)} examples, {accelerator.num_processes} process(es), "
        f"batch {per_process}/process x {config.gradient_accumulation_steps} accumulation = {total_batch}"
    )
    # From here on SIGINT / SIGTERM finish the step and checkpoint; the previous handlers come back however `main`
    # ends (a return, NonFiniteLossError, CheckpointWriteError, any exception), or Ctrl-C would be swallowed once
    # in the process that called it.
    stop = run.StopSignal()
    try:
        progress = run.progress_bar(accelerator, config.max_train_steps, global_step, "train")

        # 9. The loop.
        step_loss, step_start, consecutive_bad = 0.0, time.perf_counter(), 0
        for micro_step, batch in run.train_batches(accelerator, dataloader, plan):
            batch_size = len(batch["captions"])
            generators = run.sample_generators(config.seed, global_step, micro_step, accelerator, batch_size)
            with accelerator.accumulate(unet):
                latents = batch_latents(batch, vae, latent_cache, generators, weight_dtype)
                captions = drop_captions(batch["captions"], config.cfg_dropout, generators)
                encoder_hidden_states = caption_embeddings(captions, tokenizer, text_encoder, text_cache, accelerator,
                                                           batch.get("text_embedding"))  # fmt: skip

                noise = torch.stack([torch.randn(latents.shape[1:], generator=g) for g in generators])
                if config.noise_offset:  # Guttenberg 2023, "Diffusion with offset noise": per-channel DC shift
                    noise += config.noise_offset * torch.stack(
                        [torch.randn(latents.shape[1], 1, 1, generator=g) for g in generators]
                    )
                num_train_timesteps = noise_scheduler.config.num_train_timesteps
                timesteps = torch.cat([torch.randint(0, num_train_timesteps, (1,), generator=g) for g in generators])
                noise, timesteps = noise.to(latents.device), timesteps.to(latents.device)
                noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)  # Eq. 4
                target = training_target(noise_scheduler, latents, noise, timesteps)

                model_pred = forward(noisy_latents, timesteps, encoder_hidden_states).sample
                is_prior = dreambooth.prior_mask(batch["indices"], prior_from)  # None without prior preservation
                loss = diffusion_loss(model_pred, target, timesteps, noise_scheduler, config.snr_gamma, is_prior,
                                      config.prior_loss_weight)  # fmt: skip

                accelerator.backward(loss)
                ckpt.kill_point("step", global_step + 1, accelerator.process_index)
                finite, grad_norm = run.guarded_step(accelerator, params, loss, optimizer, lr_scheduler, config)
                step_loss += accelerator.reduce(loss.detach().float(), reduction="mean").item()

            if not accelerator.sync_gradients:
                continue

            # One optimizer step is complete (all accumulation micro-steps done).
            consecutive_bad = run.after_update(config, output_dir, global_step + 1, finite, step_loss, grad_norm,
                                               consecutive_bad, ema, unet, "learning_rate")  # fmt: skip
            global_step += 1
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
                run_judge(config, accelerator, models, global_step, eval_history)
            state = {"global_step": global_step, "history": history, "eval_history": eval_history,
                     "config": run_settings, "data": data_record}  # fmt: skip
            if run.checkpoint_or_stop(accelerator, config, output_dir, global_step, state, ema, stop, done, progress,
                                      ckpt.EMA_FOLDER, "output_dir"):  # fmt: skip
                return output_dir
            if done:
                break
        progress.close()

        # 10. Save the EMA pipeline as a self-contained folder (loads with LatentDiffusionPipeline.from_pretrained, or
        #     without sculpt with DiffusionPipeline.from_pretrained(..., trust_remote_code=True)), or with LoRA the
        #     adapters alone (pytorch_lora_weights.safetensors, for `load_lora_weights` on the base); samples, plots,
        #     the model card; then push it when asked, once the run is complete (a failed push loses nothing).
        accelerator.wait_for_everyone()
        save_models = sharded.unsharded(accelerator, models)  # under FSDP gathered: the pipeline saves unsharded
        if accelerator.is_main_process:
            pipeline = build_pipeline(accelerator, save_models, use_ema=True)
            if adapters:
                lora.save_adapters(output_dir, pipeline.unet, pipeline.text_encoder, config.train_text_encoder_lora)
            else:
                pipeline.save_pretrained(output_dir)
            ckpt.kill_point("save", global_step)
            images = generate(pipeline, config) if config.validation_prompts else []
            if images:
                save_image_grid(images, output_dir / "samples.png", captions=repeat_prompts(config))
                for size in extra_sizes(config):  # e.g. a bucketed model's other aspect ratios
                    save_image_grid(generate(pipeline, config, size), output_dir / f"samples{size_suffix(size)}.png",
                                    captions=repeat_prompts(config))  # fmt: skip
            plot_loss(history, output_dir / "loss.png")
            (output_dir / "loss_history.json").write_text(json.dumps(history, indent=1))
            if eval_history:
                write_eval_history(eval_history, output_dir)
            hub.write_model_card(output_dir, config, images, accelerator.num_processes)
            accelerator.print(f"Saved the trained pipeline to {output_dir}")
        run.wait_for_main_process(accelerator)
        accelerator.end_training()
    finally:
        stop.restore()
    if config.push_to_hub and accelerator.is_main_process:
        url = hub.push_folder(output_dir, config.hub_model_id, private=config.hub_private)
        accelerator.print(f"Pushed it to {url}")
    return output_dir


# ---------------------------------------------------------------------------------------------------------------------
# What a step trains on
# ---------------------------------------------------------------------------------------------------------------------
def drop_captions(captions: list[str], p: float, generators: list[torch.Generator]) -> list[str]:
    """CFG training (Ho & Salimans 2022, arXiv 2207.12598): with probability p a caption becomes "", the exact
    unconditional input the pipeline encodes at inference."""
    return ["" if torch.rand(1, generator=g).item() < p else c for c, g in zip(captions, generators)]


def caption_embeddings(captions, tokenizer, text_encoder, cache, accelerator, cached=None) -> torch.Tensor:
    """The captions' CLIP embeddings exactly as the pipeline encodes prompts (`encode_text`), or from the cache:
    the memory one by caption, or `cached`, the batch's own from the disk cache (a dropped caption takes "")."""
    if cached is not None:
        return torch.stack([cache[""] if c == "" else e for c, e in zip(captions, cached)]).to(accelerator.device)
    if cache is not None:
        return torch.stack([cache[c] for c in captions]).to(accelerator.device)
    # A trained text encoder is DDP-wrapped and called through the wrapper so its gradients are synchronised.
    config = accelerator.unwrap_model(text_encoder).config
    with torch.set_grad_enabled(text_encoder.training):
        return encode_text(tokenizer, text_encoder, captions, accelerator.device, text_encoder_config=config)


def batch_latents(batch, vae, cache, generators, weight_dtype) -> torch.Tensor:
    """The batch's latents as the pipelines treat them (pipelines/latents.py): z ~ q(z | x), one ε per example from
    its own generator, normalised in float32. From the VAE, or from the cached mean and std of q(z | x): in memory
    (`cache`), or on disk (the batch carries them, training/latent_cache.py)."""
    if "latent_mean" in batch or cache is not None:
        if "latent_mean" in batch:
            mean, std = batch["latent_mean"], batch["latent_std"]
        else:
            mean, std = (torch.stack([cache[i][k] for i in batch["indices"]]) for k in (0, 1))
        eps = torch.stack([torch.randn(mean.shape[1:], generator=g) for g in generators])
        return normalize_latents((mean + std * eps).float(), vae.config).to(vae.device)
    pixels = batch["pixel_values"]
    factor = vae_scale_factor(vae)
    shape = (vae.config.latent_channels, pixels.shape[2] // factor, pixels.shape[3] // factor)
    eps = torch.stack([torch.randn(shape, generator=g) for g in generators])
    with torch.no_grad():
        latents = encode_latents(vae, pixels.to(vae.device, weight_dtype), noise=eps, dtype=torch.float32)
    return latents.to(vae.device)


@torch.no_grad()
def cache_latent_distributions(dataset, config, vae, accelerator, weight_dtype) -> dict[int, tuple[torch.Tensor, ...]]:
    """Mean and std of q(z | x) for every example, computed once; each step still samples z afresh from them. Each
    process encodes every N-th batch and all of them receive the whole cache (the same numbers as one process
    computing it alone: the batches are the same, only where they are computed differs)."""
    loader, _ = build_train_dataloader(dataset, config, shuffle=False, augment=False, multiple=bucket_multiple(config))
    batches = list(loader.batch_sampler)[accelerator.process_index :: accelerator.num_processes]
    mine = []
    for indices in tqdm(batches, desc="cache latents", disable=not accelerator.is_local_main_process):
        batch = loader.collate_fn([loader.dataset[i] for i in indices])
        posterior = vae.encode(batch["pixel_values"].to(vae.device, weight_dtype)).latent_dist
        mine.append(posterior_rows(batch["indices"], posterior))
    everything = gather_object(mine) if accelerator.num_processes > 1 else mine
    return {i: (mean, std) for rows in everything for i, mean, std in zip(*rows)}


def posterior_rows(indices, posterior) -> tuple[list[int], torch.Tensor, torch.Tensor]:
    """One encoded batch as `gather_object` sends it: its indices and the posterior's mean and std, each tensor in a
    storage of its own. A tensor pickles with its whole base storage, and mean and std are views of the VAE's one
    output tensor: sent as per-example views, every example carried its batch (~90× the bytes; at 2 processes on 3,968
    32-px images, 8 GiB of peak RSS and ~20 s more start-up)."""
    compact = {"memory_format": torch.contiguous_format}
    return (list(indices), posterior.mean.float().cpu().clone(**compact),
            posterior.std.float().cpu().clone(**compact))  # fmt: skip


@torch.no_grad()
def cache_text_embeddings(captions, tokenizer, text_encoder, accelerator) -> dict[str, torch.Tensor]:
    """Every distinct caption's embedding (and the empty caption's, for caption dropout), computed once."""
    unique = sorted(set(captions) | {""})
    cache = {}
    for start in range(0, len(unique), 64):
        chunk = unique[start : start + 64]
        embeddings = encode_text(tokenizer, text_encoder, chunk, text_encoder.device).float().cpu()
        for caption, embedding in zip(chunk, embeddings):
            cache[caption] = embedding
    return cache


def flat_hparams(config) -> dict:
    """The config as tracker hyperparameters: tensorboard's hparams take scalars and strings only."""
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in config_to_dict(config).items()}
