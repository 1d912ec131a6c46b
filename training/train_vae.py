"""Stage 1 of latent diffusion: train an AutoencoderKL, then measure and store the latent scaling factor.

Rombach et al. 2022 (arXiv 2112.10752), Sec. 3 and 4.3.2: the autoencoder is trained with a reconstruction loss plus
a small KL term towards N(0, I); its latents are then rescaled by 1/std (measured on the data) so the diffusion
model sees roughly unit-variance inputs. We store that number as `scaling_factor` in the VAE's config, where
diffusers pipelines read it, rather than hard-coding SD's 0.18215.

    accelerate launch scripts/train_vae.py --config configs/shapes.yaml
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from accelerate.logging import get_logger
from accelerate.utils import set_seed
from diffusers import AutoencoderKL
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

from pipelines.latents import vae_scale_factor

from . import checkpoint as ckpt
from . import run
from .config import VAE_RESUMABLE_CHANGES, TrainConfig
from .data import build_train_dataloader
from .loss import vae_loss
from .models import bucket_multiple
from .reporting import plot_loss, save_image_grid
from .streaming import Stream, StreamLoader

logger = get_logger(__name__)

EMA_FOLDER = "vae_ema"  # the EMA weights inside a checkpoint of this stage
SAVED_RUN_FILES = ("train_config.yaml", "config.json", "diffusion_pytorch_model.safetensors")  # a saved VAE run


class _Autoencode(torch.nn.Module):
    """encode → sample → decode as one `forward`, so DDP sees (and synchronises) the whole computation."""

    def __init__(self, vae: AutoencoderKL):
        super().__init__()
        self.vae = vae

    def forward(self, pixel_values: torch.Tensor, generators: list[torch.Generator]):
        posterior = self.vae.encode(pixel_values).latent_dist
        eps = torch.stack([torch.randn(posterior.mean.shape[1:], generator=g) for g in generators])
        latents = posterior.mean + posterior.std * eps.to(posterior.mean)
        return self.vae.decode(latents).sample, posterior.parameters


def main(config: TrainConfig, dry_run: bool = False) -> Path:
    """Train the autoencoder per `config` into `vae_output_dir`; with `dry_run`, build the model and the data, report
    them, and write nothing. Checkpoints, resume, stop signals and non-finite losses work as in the diffusion stage
    (training/train.py), with the checkpoints in `vae_output_dir`."""
    output_dir = Path(config.vae_output_dir)

    # 1. Accelerator; the checkpoint to resume from (complete, safetensors, written with the settings that decide
    #    what this stage trains) and the output folder are checked before anything is built.
    accelerator = run.make_accelerator(config, output_dir, script="scripts/train_vae.py")
    resume_from = ckpt.resolve_resume(config.resume_from_checkpoint, output_dir)
    if resume_from is not None:
        ckpt.check_resumable(resume_from, config, accelerator.num_processes, resumable=VAE_RESUMABLE_CHANGES,
                             ema_folder=EMA_FOLDER, output_key="vae_output_dir")  # fmt: skip
    run.check_output_dir(config, output_dir, "vae_output_dir", SAVED_RUN_FILES)
    set_seed(config.seed)

    # 2. Model and data, checked before anything is written.
    vae = AutoencoderKL(**config.vae_config)
    factor = vae_scale_factor(vae)
    if config.resolution % factor:
        raise ValueError(f"`resolution`: {config.resolution} must be divisible by the VAE's downsampling factor {factor}.")
    dataset, dataloader = run.train_data(config, accelerator, config.vae_train_batch_size, bucket_multiple(config, vae))
    if dry_run:
        accelerator.print(
            f"dry run: {len(dataset)} examples, VAE {sum(p.numel() for p in vae.parameters()) / 1e6:.2f}M parameters, "
            f"latents {vae.config.latent_channels}x{config.resolution // factor}x{config.resolution // factor}; "
            f"nothing was trained or written."
        )
        return output_dir
    run.start_output_dir(accelerator, config, output_dir, "train_config.yaml", run="VAE run")
    ema = run.make_ema(config, vae, accelerator.device)

    # 3. Optimizer, schedule, prepare.
    model = _Autoencode(vae)
    optimizer = run.make_optimizer(config, model.parameters(), config.vae_learning_rate)
    lr_scheduler = run.make_lr_scheduler(config, optimizer, accelerator.num_processes, config.vae_max_train_steps)
    model, optimizer, dataloader, lr_scheduler = accelerator.prepare(model, optimizer, dataloader, lr_scheduler)

    # 4. Resume: weights, optimizer, LR schedule and EMA from the checkpoint; data position by skipping batches.
    state = run.resume(accelerator, config, resume_from, ema, EMA_FOLDER, output_dir)
    global_step, history = state.get("global_step", 0), state.get("history", [])
    run_settings = ckpt.fingerprint(config, accelerator.num_processes, VAE_RESUMABLE_CHANGES)  # in every checkpoint
    plan = run.EpochPlan.make(len(dataloader), config.gradient_accumulation_steps, config.vae_max_train_steps,
                              global_step)  # fmt: skip

    # 5. The loop. Each sample's latent noise comes from a generator seeded by its place in the run
    #    (run.sample_generators), so a resumed run draws what the uninterrupted one drew.
    stop = run.StopSignal()  # nothing between installing the handlers and the `try` that puts the previous ones back
    try:
        progress = run.progress_bar(accelerator, config.vae_max_train_steps, global_step, "train vae")
        sums, consecutive_bad = {"loss": 0.0, "reconstruction": 0.0, "kl": 0.0}, 0
        for micro_step, batch in run.train_batches(accelerator, dataloader, plan):
            pixels = batch["pixel_values"]
            generators = run.sample_generators(config.seed, global_step, micro_step, accelerator, len(pixels))
            with accelerator.accumulate(model):
                reconstruction, moments = model(pixels, generators)
                loss, rec, kl = vae_loss(reconstruction, pixels, DiagonalGaussianDistribution(moments), config.kl_weight)
                accelerator.backward(loss)
                ckpt.kill_point("step", global_step + 1, accelerator.process_index)
                finite, grad_norm = run.guarded_step(accelerator, model.parameters(), loss, optimizer, lr_scheduler,
                                                     config)  # fmt: skip
                for name, value in (("loss", loss), ("reconstruction", rec), ("kl", kl)):
                    sums[name] += accelerator.reduce(value.detach().float(), "mean").item()
            if not accelerator.sync_gradients:
                continue

            # One optimizer step is complete (all accumulation micro-steps done).
            logs = {name: total / config.gradient_accumulation_steps for name, total in sums.items()}
            sums = dict.fromkeys(sums, 0.0)
            consecutive_bad = run.after_update(config, output_dir, global_step + 1, finite, logs["loss"], grad_norm,
                                               consecutive_bad, ema, accelerator.unwrap_model(model).vae,
                                               "vae_learning_rate")  # fmt: skip
            global_step += 1
            history.append({"step": global_step, **logs})
            progress.update(1)
            progress.set_postfix(rec=f"{logs['reconstruction']:.4f}", kl=f"{logs['kl']:.3f}")

            done = global_step >= config.vae_max_train_steps
            state = {"global_step": global_step, "history": history, "config": run_settings}
            if run.checkpoint_or_stop(accelerator, config, output_dir, global_step, state, ema, stop, done, progress,
                                      EMA_FOLDER, "vae_output_dir"):  # fmt: skip
                return output_dir
            if done:
                break
        progress.close()
    finally:
        stop.restore()  # also when a non-finite loss or a failed checkpoint write ends the run

    # 6. Measure the latent scale on the data with the final (EMA) weights, store it in the config, save.
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        vae = accelerator.unwrap_model(model).vae
        if ema is not None:
            ema.copy_to(vae.parameters())
        vae.eval()
        scaling_factor, reconstruction_error, pairs = measure_latents(vae, dataset, config)
        vae.register_to_config(scaling_factor=scaling_factor)
        vae.save_pretrained(output_dir)
        plot_loss([{"step": h["step"], "loss": h["reconstruction"]} for h in history], output_dir / "loss.png",
                  title="VAE reconstruction loss (L1)")
        save_image_grid(pairs, output_dir / "reconstructions.png", columns=8)
        metrics = {"scaling_factor": scaling_factor, "reconstruction_l1": reconstruction_error,
                   "final_train_reconstruction": history[-1]["reconstruction"] if history else None,
                   "steps": global_step}
        (output_dir / "vae_metrics.json").write_text(json.dumps(metrics, indent=2))
        accelerator.print(
            f"Saved the VAE to {output_dir} (scaling_factor={scaling_factor:.4f}, "
            f"reconstruction L1 on training images={reconstruction_error:.4f})"
        )
    run.wait_for_main_process(accelerator)
    accelerator.end_training()
    return output_dir


@torch.no_grad()
def measure_latents(vae: AutoencoderKL, dataset, config, max_examples: int = 1024):
    """1 / std of latent samples over (up to) `max_examples` examples, the mean L1 reconstruction error there, and
    a few original/reconstruction pairs for a picture."""
    if isinstance(dataset, Stream):  # its first rows, in file order
        loader = StreamLoader(dataset, config, batch_size=64, shuffle=False, augment=False)
    else:
        loader, _ = build_train_dataloader(dataset, config, batch_size=64, shuffle=False, augment=False,
                                           multiple=bucket_multiple(config, vae))
    latents, errors, pairs, seen = [], [], [], 0
    generator = torch.Generator().manual_seed(config.seed)
    for batch in loader:
        pixels = batch["pixel_values"].to(vae.device)
        posterior = vae.encode(pixels).latent_dist
        z = posterior.sample(generator=generator)
        latents.append(z.flatten())
        reconstruction = vae.decode(posterior.mode()).sample.clamp(-1, 1)
        errors.append((reconstruction - pixels).abs().mean(dim=(1, 2, 3)))
        if not pairs:
            for original, rebuilt in list(zip(pixels, reconstruction))[:16]:
                pairs += [_to_pil(original), _to_pil(rebuilt)]
        seen += len(pixels)
        if seen >= max_examples:
            break
    scaling_factor = float(1.0 / torch.cat(latents).std())
    return scaling_factor, float(torch.cat(errors).mean()), pairs


def _to_pil(image: torch.Tensor):
    from PIL import Image

    array = ((image.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array)
