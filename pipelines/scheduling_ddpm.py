"""DDPM scheduler written from the paper: Ho, Jain & Abbeel, "Denoising Diffusion Probabilistic Models" (2020),
arXiv 2006.11239. Equation numbers below are that paper's.

It is a drop-in for `diffusers.DDPMScheduler`: same constructor arguments and defaults, the same config file, the
same public methods and attribute names, and, given the same inputs, noise and config, the same outputs.
Where diffusers' behaviour is numerically broken we follow the math instead and say so:
`variance_type="fixed_large_log"` (diffusers takes `log(β_t) ** 0.5`, which is NaN; we use σ_t = exp(½ log β_t)).

Notation, once:
    β_t      betas                  forward-process variance at step t (Eq. 2)
    α_t      alphas                 1 - β_t
    ᾱ_t      alphas_cumprod         Π_{s ≤ t} α_s, so q(x_t | x_0) = N(√ᾱ_t x_0, (1 - ᾱ_t) I)   (Eq. 4)
    x_t      sample                 the current noisy sample
    x̂_0      pred_original_sample   the model's estimate of the clean sample (Eq. 15)
    x_{t-1}  prev_sample            the sample one (inference) step later in the reverse process
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers, SchedulerMixin
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid", "laplace")
VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned", "learned_range")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")  # also the training config's choices
TIMESTEP_SPACINGS = ("linspace", "leading", "trailing")


@dataclass
class DDPMSchedulerOutput(BaseOutput):
    """Output of `DDPMScheduler.step`.

    Args:
        prev_sample: x_{t-1}, the input of the next denoising step.
        pred_original_sample: x̂_0, the model's current estimate of the clean sample (for previews / guidance).
    """

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


def _alpha_bar_betas(num_train_timesteps: int, alpha_bar, max_beta: float = 0.999) -> torch.Tensor:
    """β_t = 1 - ᾱ(t/T) / ᾱ((t-1)/T) for a continuous ᾱ(·), capped at `max_beta` so that β_T < 1."""
    betas = [
        min(1 - alpha_bar((i + 1) / num_train_timesteps) / alpha_bar(i / num_train_timesteps), max_beta)
        for i in range(num_train_timesteps)
    ]
    return torch.tensor(betas, dtype=torch.float32)


def _cosine_alpha_bar(t: float) -> float:
    # Improved DDPM (Nichol & Dhariwal 2021, arXiv 2102.09672) Eq. 17 with offset s = 0.008.
    return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2


def _laplace_alpha_bar(t: float) -> float:
    # Laplace noise schedule (Hang & Gu 2024, arXiv 2407.03297): log-SNR λ(t) drawn from a Laplace inverse CDF.
    log_snr = -0.5 * math.copysign(1, 0.5 - t) * math.log(1 - 2 * math.fabs(0.5 - t) + 1e-6)
    snr = math.exp(log_snr)
    return math.sqrt(snr / (1 + snr))


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Shift and scale √ᾱ_t so that √ᾱ_T = 0 (zero terminal SNR) while √ᾱ_1 is unchanged.

    Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed", arXiv 2305.08891, Algorithm 1.
    """
    sqrt_alphas_cumprod = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = sqrt_alphas_cumprod[0].clone(), sqrt_alphas_cumprod[-1].clone()
    sqrt_alphas_cumprod = (sqrt_alphas_cumprod - last) * (first / (first - last))
    alphas_cumprod = sqrt_alphas_cumprod**2
    alphas = torch.cat([alphas_cumprod[0:1], alphas_cumprod[1:] / alphas_cumprod[:-1]])
    return 1 - alphas


class DDPMScheduler(SchedulerMixin, ConfigMixin):
    """Ancestral sampler of Ho et al. 2020 (Algorithm 2), with the forward process used for training (Eq. 4).

    Arguments, defaults and config keys are those of `diffusers.DDPMScheduler`, so configs move freely between the
    two (and to every scheduler in `compatibles`) with `from_config`.

    Args:
        num_train_timesteps: T, the number of forward steps the model was trained with.
        beta_start, beta_end: β_1 and β_T for the "linear", "scaled_linear" and "sigmoid" schedules.
        beta_schedule: one of "linear" (Ho et al.), "scaled_linear" (latent diffusion: linear in √β),
            "squaredcos_cap_v2" (cosine, Nichol & Dhariwal), "sigmoid" (GeoDiff), "laplace".
        trained_betas: explicit β_1..β_T; overrides `beta_schedule`.
        variance_type: the reverse-process variance σ_t² (Sec. 3.2): "fixed_small" is the posterior variance β̃_t
            (Eq. 7), "fixed_large" is β_t; the "_log" variants compute the same in log space; "learned" and
            "learned_range" read it from the second half of the model's output channels (Improved DDPM Eq. 15).
        clip_sample, clip_sample_range: clamp x̂_0 to [-range, range] before the posterior mean.
        prediction_type: what the model predicts: "epsilon" (ε, Eq. 11), "sample" (x_0), or "v_prediction"
            (v = √ᾱ_t ε - √(1-ᾱ_t) x_0, Salimans & Ho 2022, arXiv 2202.00512).
        thresholding, dynamic_thresholding_ratio, sample_max_value: Imagen's dynamic thresholding of x̂_0
            (Saharia et al. 2022, arXiv 2205.11487); not suitable for latent diffusion.
        timestep_spacing: how inference timesteps are placed ("linspace", "leading", "trailing"; Table 2 of
            arXiv 2305.08891).
        steps_offset: added to every "leading" timestep (Stable Diffusion uses 1).
        rescale_betas_zero_snr: rescale the schedule to zero terminal SNR (arXiv 2305.08891); pair it with
            v-prediction and "trailing" spacing.
    """

    _compatibles = [e.name for e in KarrasDiffusionSchedulers]
    order = 1

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        variance_type: str = "fixed_small",
        clip_sample: bool = True,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
    ):
        _check_choice("beta_schedule", beta_schedule, BETA_SCHEDULES)
        _check_choice("variance_type", variance_type, VARIANCE_TYPES)
        _check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
        _check_choice("timestep_spacing", timestep_spacing, TIMESTEP_SPACINGS)
        if not isinstance(num_train_timesteps, int) or num_train_timesteps < 1:
            raise ValueError(f"`num_train_timesteps`: {num_train_timesteps!r} must be a positive integer.")

        # β_1..β_T (Eq. 2).
        if trained_betas is not None:
            self.betas = torch.tensor(trained_betas, dtype=torch.float32)
            if self.betas.ndim != 1 or len(self.betas) != num_train_timesteps:
                raise ValueError(
                    f"`trained_betas`: got shape {tuple(self.betas.shape)}; expected ({num_train_timesteps},) to match "
                    f"`num_train_timesteps`."
                )
        elif beta_schedule == "linear":
            self.betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)
        elif beta_schedule == "scaled_linear":
            self.betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float32) ** 2
        elif beta_schedule == "squaredcos_cap_v2":
            self.betas = _alpha_bar_betas(num_train_timesteps, _cosine_alpha_bar)
        elif beta_schedule == "laplace":
            self.betas = _alpha_bar_betas(num_train_timesteps, _laplace_alpha_bar)
        else:  # sigmoid
            self.betas = torch.sigmoid(torch.linspace(-6, 6, num_train_timesteps)) * (beta_end - beta_start) + beta_start
        if rescale_betas_zero_snr:
            self.betas = rescale_zero_terminal_snr(self.betas)

        self.alphas = 1.0 - self.betas  # α_t
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)  # ᾱ_t
        self.one = torch.tensor(1.0)  # ᾱ_0 := 1, the "previous" of the first step
        self.init_noise_sigma = 1.0  # x_T ~ N(0, I)

        self.custom_timesteps = False
        self.num_inference_steps = None
        self.timesteps = torch.arange(num_train_timesteps - 1, -1, -1, dtype=torch.int64)
        self.variance_type = variance_type

    # ------------------------------------------------------------------------------------------------------------
    # Inference timesteps
    # ------------------------------------------------------------------------------------------------------------
    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: list[int] | None = None,
    ):
        """Choose the timesteps of the reverse chain: `num_inference_steps` of them spaced by
        `config.timestep_spacing`, or an explicit strictly descending list `timesteps`."""
        T = self.config.num_train_timesteps
        if num_inference_steps is not None and timesteps is not None:
            raise ValueError(
                f"Pass either `num_inference_steps` ({num_inference_steps}) or `timesteps` ({list(timesteps)}), not both."
            )
        if num_inference_steps is None and timesteps is None:
            raise ValueError("Pass one of `num_inference_steps` (an int in [1, num_train_timesteps]) or `timesteps`.")

        if timesteps is not None:
            timesteps = [int(t) for t in timesteps]
            if len(timesteps) == 0:
                raise ValueError("`timesteps`: got an empty list; pass at least one timestep.")
            for i in range(1, len(timesteps)):
                if timesteps[i] >= timesteps[i - 1]:
                    raise ValueError(
                        f"`timesteps` must be strictly descending; got {timesteps[i - 1]} followed by {timesteps[i]}."
                    )
            if timesteps[0] >= T or timesteps[-1] < 0:
                raise ValueError(
                    f"`timesteps` must lie in [0, num_train_timesteps - 1] = [0, {T - 1}]; got {timesteps[0]}..{timesteps[-1]}."
                )
            schedule = np.array(timesteps, dtype=np.int64)
            self.custom_timesteps = True
            # Like diffusers: custom timesteps leave `num_inference_steps` as it was.
        else:
            if not isinstance(num_inference_steps, (int, np.integer)) or num_inference_steps < 1:
                raise ValueError(f"`num_inference_steps`: {num_inference_steps!r} must be a positive integer.")
            if num_inference_steps > T:
                raise ValueError(
                    f"`num_inference_steps`: {num_inference_steps} cannot be larger than `num_train_timesteps`: {T}; "
                    f"the model was only trained on {T} timesteps."
                )
            self.num_inference_steps = int(num_inference_steps)
            self.custom_timesteps = False
            spacing = self.config.timestep_spacing
            if spacing == "linspace":  # both ends included: T-1 ... 0
                schedule = np.linspace(0, T - 1, num_inference_steps).round()[::-1].copy().astype(np.int64)
            elif spacing == "leading":  # 0, k, 2k, ... (+ offset), the last step starts below T-1
                step_ratio = T // num_inference_steps
                schedule = (np.arange(0, num_inference_steps) * step_ratio).round()[::-1].copy().astype(np.int64)
                schedule += self.config.steps_offset
                if schedule[0] >= T:  # diffusers' DDPMScheduler fails later, with an IndexError in `step`
                    raise ValueError(
                        f"`num_inference_steps`: {num_inference_steps} with 'leading' spacing and `steps_offset`: "
                        f"{self.config.steps_offset} starts at timestep {schedule[0]}, past the last trained one "
                        f"({T - 1}); use at most {T - self.config.steps_offset} steps, or "
                        f"timestep_spacing='trailing'."
                    )
            else:  # trailing: starts exactly at T-1, which zero-terminal-SNR needs
                step_ratio = T / num_inference_steps
                schedule = np.round(np.arange(T, 0, -step_ratio)).astype(np.int64) - 1
        self.timesteps = torch.from_numpy(schedule).to(device)

    def previous_timestep(self, timestep: int | torch.Tensor) -> int | torch.Tensor:
        """The timestep that follows `timestep` in the reverse chain (-1 after the last one)."""
        if self.custom_timesteps or self.num_inference_steps:
            matches = (self.timesteps == timestep).nonzero(as_tuple=True)[0]
            if len(matches) == 0:
                raise ValueError(
                    f"`timestep`: {int(timestep)} is not one of the scheduler's timesteps "
                    f"{self.timesteps.tolist()}; call `set_timesteps` first and step through `scheduler.timesteps`."
                )
            index = matches[0]
            return torch.tensor(-1) if index == self.timesteps.shape[0] - 1 else self.timesteps[index + 1]
        return timestep - 1

    def scale_model_input(self, sample: torch.Tensor, timestep: int | None = None) -> torch.Tensor:
        """DDPM feeds x_t to the model unscaled (kept for API compatibility with schedulers that scale)."""
        return sample

    # ------------------------------------------------------------------------------------------------------------
    # Reverse process
    # ------------------------------------------------------------------------------------------------------------
    def _alpha_prods(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """ᾱ_t and ᾱ_{t'} for the previous inference timestep t' (ᾱ := 1 before the first step)."""
        prev_t = self.previous_timestep(t)
        alpha_prod_t = self.alphas_cumprod[t]
        alpha_prod_t_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.one
        return alpha_prod_t, alpha_prod_t_prev

    def _get_variance(self, t: int, predicted_variance: torch.Tensor | None = None, variance_type: str | None = None):
        """σ_t² of p_θ(x_{t-1} | x_t) (Sec. 3.2), or its log / square root as `variance_type` asks; the same
        return convention as diffusers' private method of this name."""
        alpha_prod_t, alpha_prod_t_prev = self._alpha_prods(t)
        # With skipped steps the single-step β_t becomes 1 - ᾱ_t / ᾱ_{t'} (the same Markov chain, subsampled).
        current_beta_t = 1 - alpha_prod_t / alpha_prod_t_prev
        # Posterior variance β̃_t = (1 - ᾱ_{t-1}) / (1 - ᾱ_t) · β_t (Eq. 7), floored so its log stays finite.
        posterior_variance = torch.clamp((1 - alpha_prod_t_prev) / (1 - alpha_prod_t) * current_beta_t, min=1e-20)

        variance_type = variance_type or self.config.variance_type
        if variance_type == "fixed_small":
            return posterior_variance
        if variance_type == "fixed_small_log":  # returns σ_t itself, computed in log space
            return torch.exp(0.5 * torch.log(posterior_variance))
        if variance_type == "fixed_large":
            return current_beta_t
        if variance_type == "fixed_large_log":  # returns log σ_t², GLIDE's "max_log"
            return torch.log(current_beta_t)
        if predicted_variance is None:
            raise ValueError(
                f"`variance_type`: {variance_type!r} needs the model to predict the variance: its output must have "
                f"twice the sample's channels (the second half is the variance)."
            )
        if variance_type == "learned":
            return predicted_variance
        # learned_range: log σ_t² interpolates between log β̃_t and log β_t (Improved DDPM, Eq. 15).
        frac = (predicted_variance + 1) / 2
        return frac * torch.log(current_beta_t) + (1 - frac) * torch.log(posterior_variance)

    def _threshold_sample(self, sample: torch.Tensor) -> torch.Tensor:
        """Dynamic thresholding (Imagen, arXiv 2205.11487, Sec. 2.3): per sample, s = the `ratio` quantile of |x̂_0|,
        clamped to [1, sample_max_value]; x̂_0 ← clamp(x̂_0, -s, s) / s."""
        dtype = sample.dtype
        batch_size, channels, *rest = sample.shape
        if dtype not in (torch.float32, torch.float64):
            sample = sample.float()  # quantile needs float32+, and clamp has no CPU half kernel
        flat = sample.reshape(batch_size, channels * int(np.prod(rest)))
        s = torch.quantile(flat.abs(), self.config.dynamic_thresholding_ratio, dim=1)
        s = torch.clamp(s, min=1, max=self.config.sample_max_value).unsqueeze(1)
        flat = torch.clamp(flat, -s, s) / s
        return flat.reshape(batch_size, channels, *rest).to(dtype)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
    ) -> DDPMSchedulerOutput | tuple:
        """One step of Algorithm 2: sample x_{t'} ~ p_θ(x_{t'} | x_t), t' the next inference timestep.

        Args:
            model_output: the model's prediction at (x_t, t): ε, x_0 or v per `prediction_type`; with a learned
                variance, twice the channels of `sample`.
            timestep: t, an element of `self.timesteps`.
            sample: x_t.
            generator: the source of the step's noise z.
            return_dict: return a `DDPMSchedulerOutput` rather than a `(prev_sample, pred_original_sample)` tuple.
        """
        t = timestep

        # 0. Split off the predicted variance when the model learns Σ_θ (Improved DDPM).
        if model_output.shape[1] == sample.shape[1] * 2 and self.variance_type in ("learned", "learned_range"):
            model_output, predicted_variance = torch.split(model_output, sample.shape[1], dim=1)
        else:
            predicted_variance = None

        # 1. Schedule terms at t and at the previous inference timestep t'.
        alpha_prod_t, alpha_prod_t_prev = self._alpha_prods(t)  # ᾱ_t, ᾱ_{t'}
        beta_prod_t = 1 - alpha_prod_t  # 1 - ᾱ_t
        beta_prod_t_prev = 1 - alpha_prod_t_prev  # 1 - ᾱ_{t'}
        current_alpha_t = alpha_prod_t / alpha_prod_t_prev  # α_t over the skipped steps
        current_beta_t = 1 - current_alpha_t  # β_t over the skipped steps

        # 2. x̂_0 from the model output.
        prediction_type = self.config.prediction_type
        if prediction_type == "epsilon":
            # Eq. 15 (inverting Eq. 4): x̂_0 = (x_t - √(1-ᾱ_t) ε_θ) / √ᾱ_t
            pred_original_sample = (sample - beta_prod_t**0.5 * model_output) / alpha_prod_t**0.5
        elif prediction_type == "sample":
            pred_original_sample = model_output
        else:
            # v = √ᾱ_t ε - √(1-ᾱ_t) x_0  ⇒  x̂_0 = √ᾱ_t x_t - √(1-ᾱ_t) v   (Salimans & Ho 2022, Sec. 4)
            pred_original_sample = alpha_prod_t**0.5 * sample - beta_prod_t**0.5 * model_output

        # 3. Keep x̂_0 in the data range (Sec. 3.3: data scaled to [-1, 1]).
        if self.config.thresholding:
            pred_original_sample = self._threshold_sample(pred_original_sample)
        elif self.config.clip_sample:
            pred_original_sample = pred_original_sample.clamp(
                -self.config.clip_sample_range, self.config.clip_sample_range
            )

        # 4. Posterior mean μ̃_t(x_t, x̂_0) (Eq. 7):
        #    μ̃_t = √ᾱ_{t-1} β_t / (1-ᾱ_t) · x̂_0 + √α_t (1-ᾱ_{t-1}) / (1-ᾱ_t) · x_t
        #    With x̂_0 from Eq. 15 and no clipping this is exactly Eq. 11's ε-parameterised mean.
        pred_original_sample_coeff = (alpha_prod_t_prev**0.5 * current_beta_t) / beta_prod_t
        current_sample_coeff = current_alpha_t**0.5 * beta_prod_t_prev / beta_prod_t
        pred_prev_sample = pred_original_sample_coeff * pred_original_sample + current_sample_coeff * sample

        # 5. Algorithm 2, line 4: x_{t-1} = μ + σ_t z with z ~ N(0, I) for t > 1 (here t > 0: our t is 0-based),
        #    and no noise on the last step.
        if t > 0:
            noise = randn_tensor(
                model_output.shape, generator=generator, device=model_output.device, dtype=model_output.dtype
            )
            variance = self._get_variance(t, predicted_variance=predicted_variance)
            if self.variance_type == "fixed_small_log":  # already σ_t
                std = variance
            elif self.variance_type in ("fixed_large_log", "learned_range"):  # log σ_t²
                std = torch.exp(0.5 * variance)
            else:  # σ_t²
                std = variance**0.5
            pred_prev_sample = pred_prev_sample + std * noise

        if not return_dict:
            return (pred_prev_sample, pred_original_sample)
        return DDPMSchedulerOutput(prev_sample=pred_prev_sample, pred_original_sample=pred_original_sample)

    # ------------------------------------------------------------------------------------------------------------
    # Forward process (training)
    # ------------------------------------------------------------------------------------------------------------
    def _sqrt_alpha_terms(self, like: torch.Tensor, timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """√ᾱ_t and √(1-ᾱ_t) gathered at `timesteps` and shaped to broadcast against `like`."""
        # Keep the table on the sample's device so repeated calls in a training loop don't copy it each time.
        self.alphas_cumprod = self.alphas_cumprod.to(device=like.device)
        alphas_cumprod = self.alphas_cumprod.to(dtype=like.dtype)
        timesteps = timesteps.to(like.device)
        shape = (-1,) + (1,) * (like.ndim - 1)
        sqrt_alpha_prod = (alphas_cumprod[timesteps] ** 0.5).flatten().reshape(shape)
        sqrt_one_minus_alpha_prod = ((1 - alphas_cumprod[timesteps]) ** 0.5).flatten().reshape(shape)
        return sqrt_alpha_prod, sqrt_one_minus_alpha_prod

    def add_noise(
        self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.IntTensor
    ) -> torch.Tensor:
        """Sample q(x_t | x_0) by reparameterisation (Eq. 4): x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε."""
        sqrt_alpha_prod, sqrt_one_minus_alpha_prod = self._sqrt_alpha_terms(original_samples, timesteps)
        return sqrt_alpha_prod * original_samples + sqrt_one_minus_alpha_prod * noise

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.IntTensor) -> torch.Tensor:
        """The v-prediction target v = √ᾱ_t ε - √(1-ᾱ_t) x_0 (Salimans & Ho 2022, arXiv 2202.00512)."""
        sqrt_alpha_prod, sqrt_one_minus_alpha_prod = self._sqrt_alpha_terms(sample, timesteps)
        return sqrt_alpha_prod * noise - sqrt_one_minus_alpha_prod * sample

    def __len__(self) -> int:
        return self.config.num_train_timesteps


def _check_choice(name: str, value, accepted: tuple[str, ...]) -> None:
    if value not in accepted:
        raise ValueError(f"`{name}`: {value!r} is not supported; choose one of {', '.join(map(repr, accepted))}.")
