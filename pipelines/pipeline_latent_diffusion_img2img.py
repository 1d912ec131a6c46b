"""Image-to-image latent diffusion: SDEdit (Meng et al. 2022, "SDEdit: Guided Image Synthesis and Editing with
Stochastic Differential Equations", arXiv 2108.01073) in the latent space of `LatentDiffusionPipeline`.

Encode the image, noise it to an intermediate timestep t_0 with the forward process q(z_t | z_0) (DDPM Eq. 4, i.e.
`scheduler.add_noise`), and run the text-conditioned reverse chain from there. `strength` ∈ (0, 1] sets t_0: the last
`int(num_inference_steps * strength)` steps of the schedule are run, as in diffusers' `get_timesteps`, so the
images equal `StableDiffusionImg2ImgPipeline`'s for the same components, scheduler and generator.

Everything but stage 4 (image → noised latents) is the text-to-image pipeline's.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.image_processor import PipelineImageInput, VaeImageProcessor
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from diffusers.utils import logging
from diffusers.utils.torch_utils import randn_tensor

from .image_inputs import ImagesInfo, describe_images, is_tensor_input
from .latents import encode_latents
from .pipeline_latent_diffusion import LatentDiffusionPipeline, StepEndCallback

logger = logging.get_logger(__name__)


class LatentDiffusionImg2ImgPipeline(LatentDiffusionPipeline):
    """Text-guided image-to-image generation (SDEdit); same components as `LatentDiffusionPipeline`, so
    `LatentDiffusionImg2ImgPipeline(**pipe.components)` turns a text-to-image pipeline into this one.

    `image` is a PIL image, a numpy array in [0, 1] (HWC or NHWC), a tensor in [-1, 1] (CHW or NCHW, the VAE's own
    range), or a list of one of these kinds, all of one size; one image for all prompts, one per prompt, or one per
    generated image.
    """

    def __init__(self, vae, text_encoder, tokenizer, unet, scheduler):
        super().__init__(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler)
        # PIL images of any mode (grayscale, RGBA) become RGB, the VAE's input.
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor, do_convert_rgb=True)
        # Tensors are taken as already in [-1, 1]: diffusers guesses the range from the sign of the minimum,
        # which misreads a [-1, 1] image that happens to have no negative pixel.
        self.tensor_image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor, do_normalize=False)

    # ------------------------------------------------------------------------------------------------------------
    # Checks
    # ------------------------------------------------------------------------------------------------------------
    def check_image(self, image: PipelineImageInput | None) -> ImagesInfo:
        """`image` alone (pipelines/image_inputs.py says what is accepted); checked first because the default height
        and width come from it. Returns how many images it holds and their size."""
        images = describe_images(image, "image", channels=self.vae.config.in_channels)
        if is_tensor_input(image):
            tensors = image if isinstance(image, list) else [image]
            lo, hi = min(t.min().item() for t in tensors), max(t.max().item() for t in tensors)
            if lo < -1 - 1e-3 or hi > 1 + 1e-3:
                raise ValueError(
                    f"`image`: tensor values span [{lo:.3g}, {hi:.3g}]; tensors must be in [-1, 1] (PIL images and "
                    f"numpy arrays in [0, 1] are converted for you)."
                )
        return images

    def check_image_inputs(
        self,
        images: ImagesInfo,
        strength: float,
        num_inference_steps: int,
        timesteps: list[int] | None,
        batch_size: int,
        num_images_per_prompt: int,
    ) -> None:
        """The img2img arguments but `image` itself (`check_image`, whose result `images` is); `check_inputs` covers
        the rest."""
        if not isinstance(strength, (int, float)) or not 0 < strength <= 1:
            raise ValueError(f"`strength`: {strength!r} must be in (0, 1].")
        num_steps = len(timesteps) if timesteps is not None else num_inference_steps
        if int(num_steps * strength) < 1:
            raise ValueError(
                f"`strength`: {strength} of {num_steps} steps leaves int({num_steps} * {strength}) = 0 denoising "
                f"steps; raise `strength` or `num_inference_steps` so that their product is at least 1."
            )
        total = batch_size * num_images_per_prompt
        if images.count not in (1, batch_size, total):
            raise ValueError(
                f"`image`: got {images.count} images for {batch_size} prompts x {num_images_per_prompt} images per "
                f"prompt; pass 1, {batch_size} or {total} images."
            )

    # ------------------------------------------------------------------------------------------------------------
    # Image → latents
    # ------------------------------------------------------------------------------------------------------------
    def image_height_width(self, images: ImagesInfo, height: int | None, width: int | None) -> tuple[int, int]:
        """Height and width default to the images' (`check_image`), rounded down to whole latent pixels (as diffusers
        does)."""
        image_height, image_width = images.size
        height = image_height - image_height % self.vae_scale_factor if height is None else height
        width = image_width - image_width % self.vae_scale_factor if width is None else width
        if (height, width) != (image_height, image_width):
            logger.warning(f"`image`: resized from {(image_height, image_width)} to {(height, width)} (height, width).")
        return height, width

    def preprocess_image(self, image: PipelineImageInput, height: int, width: int) -> torch.Tensor:
        """NCHW float tensor in [-1, 1] of size (height, width)."""
        processor = self.tensor_image_processor if is_tensor_input(image) else self.image_processor
        image = processor.preprocess(image, height=height, width=width)
        return image

    def encode_image(
        self, image: torch.Tensor, batch_size: int, generator: torch.Generator | list[torch.Generator] | None
    ) -> torch.Tensor:
        """z_0 = (E(x) - shift) · scaling_factor, E(x) a sample of the VAE posterior q(z | x), for `batch_size` images
        (the normalisation training uses). Images are expanded to the batch first only when each image draws from
        its own generator; otherwise each distinct image is encoded once and repeated, as diffusers does."""
        if isinstance(generator, list):
            image = self._expand(image, batch_size)
            latents = torch.cat([encode_latents(self.vae, image[i : i + 1], generator[i]) for i in range(batch_size)])
        else:
            latents = encode_latents(self.vae, image, generator)
        return self._expand(latents, batch_size)

    def _expand(self, tensor: torch.Tensor, batch_size: int) -> torch.Tensor:
        """Repeat a batch of 1 image, or one image per prompt, to `batch_size` = prompts x images per prompt, keeping
        the images of one prompt together like `encode_prompt` does."""
        if tensor.shape[0] == batch_size:
            return tensor
        assert batch_size % tensor.shape[0] == 0, "checked by check_image_inputs"
        return tensor.repeat_interleave(batch_size // tensor.shape[0], dim=0)

    def get_timesteps(self, timesteps: torch.Tensor, num_inference_steps: int, strength: float) -> torch.Tensor:
        """The last `int(n * strength)` of the n inference steps (diffusers' `get_timesteps`): t_0 is the first
        kept timestep, so strength 1 starts from (almost) pure noise and small strengths barely change the image.
        Second-order schedulers (Heun) have `order` timesteps per step."""
        order = getattr(self.scheduler, "order", 1)
        t_start = num_inference_steps - min(int(num_inference_steps * strength), num_inference_steps)
        if hasattr(self.scheduler, "set_begin_index"):  # Euler / DPM-Solver count steps from here
            self.scheduler.set_begin_index(t_start * order)
        return timesteps[t_start * order :]

    # ------------------------------------------------------------------------------------------------------------
    # Image to image
    # ------------------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        image: PipelineImageInput | None = None,
        strength: float = 0.8,
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
        """Edit `image` toward `prompt`.

        Args:
            image: the starting image(s); see the class docstring for the accepted forms.
            strength: in (0, 1]; the fraction of the schedule that is re-run. 1 ignores the image's content
                except for its colours leaking through ᾱ_T > 0; 0.3 keeps the composition.
            height, width: the size the image is resized to; default its own size, rounded down to a multiple of
                `vae_scale_factor`.
            Other arguments: as `LatentDiffusionPipeline.__call__` (there is no `latents`: they come from `image`).
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

        # 3. Timesteps: the full schedule, then its last `strength` fraction.
        num_inference_steps = len(schedule) if schedule is not None else num_inference_steps
        timesteps = self.get_timesteps(
            self.prepare_timesteps(num_inference_steps, timesteps, device, sigmas), num_inference_steps, strength
        )

        # 4. z_{t_0} ~ q(z_{t_0} | z_0) (DDPM Eq. 4) with z_0 the encoded image; posterior sample first, then ε.
        image = self.preprocess_image(image, height, width).to(device=device, dtype=self.vae.dtype)
        image_latents = self.encode_image(image, batch_size, generator).to(prompt_embeds.dtype)
        noise = randn_tensor(image_latents.shape, generator=generator, device=device, dtype=image_latents.dtype)
        latents = self.scheduler.add_noise(image_latents, noise, timesteps[:1].repeat(batch_size))

        # 5. Denoise from t_0.
        latents = self.denoise(
            latents, timesteps, prompt_embeds, negative_prompt_embeds, self.prepare_extra_step_kwargs(generator, eta),
            callback_on_step_end, callback_on_step_end_tensor_inputs,
        )  # fmt: skip

        # 6. Decode.
        images = self.latents_to_images(latents, output_type)
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=images) if return_dict else (images,)
