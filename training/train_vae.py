"""Stage 1 of latent diffusion: train an AutoencoderKL, then measure and store the latent scaling factor.

Rombach et al. 2022 (arXiv 2112.10752), Sec. 3 and 4.3.2: the autoencoder is trained with a reconstruction loss plus
a small KL term towards N(0, I); its latents are then rescaled by 1/std (measured on the data) so the diffusion
model sees roughly unit-variance inputs. We store that number as `scaling_factor` in the VAE's config, where
diffusers pipelines read it, rather than hard-coding SD's 0.18215.

    accelerate launch scripts/train_vae.py --config configs/shapes.yaml
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from accelerate.logging import get_logger
from accelerate.utils import set_seed
from diffusers import AutoencoderKL
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from .config import TrainConfig, save_config
from .data import load_train_dataset
from .loss import vae_loss
from .reporting import plot_loss, save_image_grid
from .train import build_train_dataloader, make_accelerator, sample_generators

logger = get_logger(__name__)


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
    output_dir = Path(config.vae_output_dir)

    # 1. Accelerator and seed.
    accelerator = make_accelerator(config, output_dir)
    set_seed(config.seed)

    # 2. Model and data.
    vae = AutoencoderKL(**config.vae_config)
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    if config.resolution % factor:
        raise ValueError(f"`resolution`: {config.resolution} must be divisible by the VAE's downsampling factor {factor}.")
    dataset = load_train_dataset(config)
    dataloader, _ = build_train_dataloader(dataset, config, batch_size=config.vae_train_batch_size)
    if dry_run:
        accelerator.print(
            f"dry run: {len(dataset)} examples, VAE {sum(p.numel() for p in vae.parameters()) / 1e6:.2f}M parameters, "
            f"latents {vae.config.latent_channels}x{config.resolution // factor}x{config.resolution // factor}; "
            f"nothing was trained or written."
        )
        return output_dir
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, output_dir / "train_config.yaml")
    ema = EMAModel(vae.parameters(), decay=config.ema_decay, use_ema_warmup=config.ema_warmup) if config.use_ema else None

    # 3. Optimizer, schedule, prepare.
    model = _Autoencode(vae)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.vae_learning_rate, betas=(config.adam_beta1, config.adam_beta2),
        weight_decay=config.adam_weight_decay, eps=config.adam_epsilon,
    )
    lr_scheduler = get_scheduler(
        config.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=config.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=config.vae_max_train_steps * accelerator.num_processes,
    )
    model, optimizer, dataloader, lr_scheduler = accelerator.prepare(model, optimizer, dataloader, lr_scheduler)

    # 4. Loop.
    history, global_step = [], 0
    steps_per_epoch = max(len(dataloader) // config.gradient_accumulation_steps, 1)
    progress = tqdm(total=config.vae_max_train_steps, desc="train vae", disable=not accelerator.is_local_main_process)
    for epoch in range(math.ceil(config.vae_max_train_steps / steps_per_epoch)):
        dataloader.set_epoch(epoch)  # through accelerate's loader, which otherwise re-sets it from its own counter
        for micro_step, batch in enumerate(dataloader):
            pixels = batch["pixel_values"]
            generators = sample_generators(config.seed, global_step, micro_step, accelerator, len(pixels))
            with accelerator.accumulate(model):
                reconstruction, moments = model(pixels, generators)
                loss, rec, kl = vae_loss(reconstruction, pixels, DiagonalGaussianDistribution(moments), config.kl_weight)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            if not accelerator.sync_gradients:
                continue
            if ema is not None:
                ema.step(accelerator.unwrap_model(model).vae.parameters())
            global_step += 1
            logs = {name: accelerator.reduce(v.detach().float(), "mean").item() for name, v in
                    (("loss", loss), ("reconstruction", rec), ("kl", kl))}
            history.append({"step": global_step, **logs})
            progress.update(1)
            progress.set_postfix(rec=f"{logs['reconstruction']:.4f}", kl=f"{logs['kl']:.3f}")
            if global_step >= config.vae_max_train_steps:
                break
        if global_step >= config.vae_max_train_steps:
            break
    progress.close()

    # 5. Measure the latent scale on the data with the final (EMA) weights, store it in the config, save.
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        vae = accelerator.unwrap_model(model).vae
        if ema is not None:
            ema.copy_to(vae.parameters())
        vae.eval()
        scaling_factor, reconstruction_error, pairs = _measure(vae, dataset, config)
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
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return output_dir


@torch.no_grad()
def _measure(vae: AutoencoderKL, dataset, config, max_examples: int = 1024):
    """1 / std of latent samples over (up to) `max_examples` examples, the mean L1 reconstruction error there, and
    a few original/reconstruction pairs for a picture."""
    loader, _ = build_train_dataloader(dataset, config, batch_size=64, shuffle=False, augment=False)
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
