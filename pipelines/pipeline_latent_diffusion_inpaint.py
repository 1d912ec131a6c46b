"""Inpainting with any text-to-image latent diffusion UNet, by replacing the known region at every step.

The method of the course material ("do the usual denoising step and then change the known part with a more
accurate (but still noisy) estimate") and of RePaint (Lugmayr et al. 2022, arXiv 2201.09865, Algorithm 1 without
resampling): after each reverse step z_t → z_{t'}, the pixels to keep are overwritten by the encoded original image
noised to t' with the forward process, z_{t'}^known = √ᾱ_{t'} z_0 + √(1-ᾱ_{t'}) ε (DDPM Eq. 4, `scheduler.add_noise`),
so the unknown region is denoised in the context of a known region at the matching noise level. After the last
step the clean z_0 is put back. ε is drawn once and reused at every step (diffusers does the same), which keeps the
known region on one forward trajectory; the UNet needs no extra input channels.

Mask convention (diffusers'): white / 1 = repaint, black / 0 = keep; it is binarised at 0.5 and resized to the
latent grid by nearest neighbour, so mask edges snap to blocks of `vae_scale_factor` pixels.

This is the algorithm of diffusers' `StableDiffusionInpaintPipeline` for a 4-channel UNet; for the same
components, a deterministic scheduler and one generator the images are the same.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.image_processor import PipelineImageInput, VaeImageProcessor
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor

from .image_inputs import ImagesInfo, describe_images
from .pipeline_latent_diffusion import StepEndCallback
from .pipeline_latent_diffusion_img2img import LatentDiffusionImg2ImgPipeline


class LatentDiffusionInpaintPipeline(LatentDiffusionImg2ImgPipeline):
    """Text-guided inpainting with a plain text-to-image UNet (4 latent channels in).

    `mask_image`: PIL image (any mode; converted to grayscale), numpy array or tensor in [0, 1], the same size as
    `image`; 1 (white) = repaint, 0 (black) = keep.
    """

    def __init__(self, vae, text_encoder, tokenizer, unet, scheduler):
        super().__init__(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler)
        self.mask_processor = VaeImageProcessor(
            vae_scale_factor=self.vae_scale_factor, do_normalize=False, do_binarize=True, do_convert_grayscale=True
        )

    def check_mask_inputs(self, images: ImagesInfo, mask_image: PipelineImageInput | None) -> None:
        """`mask_image` against `images`, what `check_image` found in `image`; and the UNet."""
        masks = describe_images(mask_image, "mask_image", channels=1, mask=True)
        if masks.size != images.size:
            raise ValueError(
                f"`mask_image`: size {masks.size} (height, width) must equal the size of `image`: {images.size}."
            )
        if masks.count not in (1, images.count):
            raise ValueError(
                f"`mask_image`: got {masks.count} masks for {images.count} images; pass one mask, or one per image."
            )
        if self.unet.config.in_channels != self.vae.config.latent_channels:
            raise ValueError(
                f"`unet`: takes {self.unet.config.in_channels} input channels; this pipeline needs a text-to-image "
                f"UNet with the VAE's {self.vae.config.latent_channels} latent channels."
            )

    def prepare_mask(self, mask_image: PipelineImageInput, height: int, width: int, batch_size: int) -> torch.Tensor:
        """(batch, 1, h, w) on the latent grid, 1 = repaint."""
        mask = self.mask_processor.preprocess(mask_image, height=height, width=width)
        mask = F.interpolate(mask, size=(height // self.vae_scale_factor, width // self.vae_scale_factor))
        return self._expand(mask, batch_size)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        image: PipelineImageInput | None = None,
        mask_image: PipelineImageInput | None = None,
        strength: float = 1.0,
        negative_prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        timesteps: list[int] | None = None,
        sigmas: list[float] | None = None,
        guidance_scale: float = 7.5,
        guidance_rescale: float = 0.0,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: dict[str, Any] | None = None,
        callback_on_step_end: StepEndCallback | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
    ) -> ImagePipelineOutput | tuple:
        """Repaint the white part of `mask_image` in `image` following `prompt`.

        Args:
            image: the image to complete; as for `LatentDiffusionImg2ImgPipeline`.
            mask_image: 1 / white = repaint, 0 / black = keep; the size of `image`.
            strength: in (0, 1]; 1 starts the masked region from pure noise, lower values from the noised original
                (SDEdit), keeping more of what was there.
            Other arguments: as `LatentDiffusionImg2ImgPipeline.__call__`.
        """
        callback_on_step_end_tensor_inputs = self.callback_tensor_inputs(
            callback_on_step_end, callback_on_step_end_tensor_inputs
        )

        # 1. Check inputs; the default size is the image's, rounded down to whole latent pixels.
        images = self.check_image(image)
        height, width = self.image_height_width(images, height, width)
        self.check_inputs(
            prompt, height, width, num_inference_steps, timesteps, guidance_scale, guidance_rescale,
            negative_prompt, prompt_embeds, negative_prompt_embeds, num_images_per_prompt, generator, output_type,
            callback_on_step_end, callback_on_step_end_tensor_inputs, sigmas=sigmas,
            cross_attention_kwargs=cross_attention_kwargs,
        )  # fmt: skip
        num_prompts = self.batch_size_of(prompt, prompt_embeds)
        schedule = timesteps if timesteps is not None else sigmas
        self.check_image_inputs(images, strength, num_inference_steps, schedule, num_prompts, num_images_per_prompt)
        self.check_mask_inputs(images, mask_image)
        self._guidance_scale = guidance_scale
        self._guidance_rescale = guidance_rescale
        self._cross_attention_kwargs = cross_attention_kwargs
        self._interrupt = False
        batch_size = num_prompts * num_images_per_prompt
        device = self._execution_device

        # 2. Encode the prompt and the unconditional input.
        prompt_embeds, negative_prompt_embeds = self.encode_prompt(
            prompt, device, num_images_per_prompt, self.do_classifier_free_guidance, negative_prompt,
            prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds,
            lora_scale=(cross_attention_kwargs or {}).get("scale"),
        )  # fmt: skip

        # 3. Timesteps: the last `strength` fraction of the schedule.
        num_inference_steps = len(schedule) if schedule is not None else num_inference_steps
        timesteps = self.get_timesteps(
            self.prepare_timesteps(num_inference_steps, timesteps, device, sigmas), num_inference_steps, strength
        )

        # 4. z_0 of the image, the mask on the latent grid, and the start: pure noise at strength 1 (the known
        #    region is overwritten after the first step anyway), else the noised original as in img2img.
        image = self.preprocess_image(image, height, width).to(device=device, dtype=self.vae.dtype)
        image_latents = self.encode_image(image, batch_size, generator).to(prompt_embeds.dtype)
        mask = self.prepare_mask(mask_image, height, width, batch_size).to(device=device, dtype=image_latents.dtype)
        noise = randn_tensor(image_latents.shape, generator=generator, device=device, dtype=image_latents.dtype)
        if strength == 1:
            latents = noise * self.scheduler.init_noise_sigma
        else:
            latents = self.scheduler.add_noise(image_latents, noise, timesteps[:1].repeat(batch_size))

        def replace_known_region(i: int, latents: torch.Tensor) -> torch.Tensor:
            """Known region ← z_0 noised to the timestep the step just reached (clean after the last step)."""
            if i < len(timesteps) - 1:
                known = self.scheduler.add_noise(image_latents, noise, timesteps[i + 1 : i + 2].repeat(batch_size))
            else:
                known = image_latents
            return (1 - mask) * known + mask * latents

        # 5. Denoise, putting the known region back after every step.
        latents = self.denoise(
            latents, timesteps, prompt_embeds, negative_prompt_embeds, self.prepare_extra_step_kwargs(generator, eta),
            callback_on_step_end, callback_on_step_end_tensor_inputs, after_step=replace_known_region,
        )  # fmt: skip

        # 6. Decode.
        images = self.latents_to_images(latents, output_type)
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=images) if return_dict else (images,)
