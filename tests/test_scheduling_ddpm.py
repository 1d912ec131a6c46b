"""Our DDPMScheduler against the paper and against diffusers' DDPMScheduler, run side by side."""

import itertools
import json

import diffusers
import numpy as np
import pytest
import torch

from pipelines import DDPMScheduler
from pipelines.scheduling_ddpm import BETA_SCHEDULES, PREDICTION_TYPES, TIMESTEP_SPACINGS, VARIANCE_TYPES

SAMPLE_SHAPE = (2, 3, 8, 8)
SAMPLE_CLIPPING = [
    {"clip_sample": False},
    {"clip_sample": True, "clip_sample_range": 1.5},
    {"clip_sample": True, "clip_sample_range": 0.5},
    {"thresholding": True, "dynamic_thresholding_ratio": 0.9, "sample_max_value": 2.0},
]
# Every named schedule with diffusers' default β_1, β_T; Stable Diffusion's; and two explicit `trained_betas` (one
# with T = 500, so nothing depends on T = 1000).
BETA_SETTINGS = {
    **{name: {"beta_schedule": name} for name in BETA_SCHEDULES},
    "scaled_linear_sd": {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
    "trained_betas_1000": {"trained_betas": (np.linspace(1e-4, 0.03, 1000) ** 1.2).tolist()},
    "trained_betas_500": {
        "num_train_timesteps": 500,
        "trained_betas": (0.001 + 0.02 * np.sin(np.linspace(0, np.pi / 2, 500)) ** 2).tolist(),
    },
}


def deterministic_sample() -> torch.Tensor:
    return torch.randn(SAMPLE_SHAPE, generator=torch.Generator().manual_seed(0)) * 1.5


def fake_model(sample: torch.Tensor, t, variance_type: str | None = None) -> torch.Tensor:
    """A fixed smooth function of (x_t, t) standing in for a network, so both schedulers see identical outputs.

    With a learned variance the second half of the channels is the variance prediction, in the range each type
    reads it in: "learned" is σ_t² itself (both schedulers take its square root), so it is positive, here in
    [0.01, 0.05], the size of β_t; "learned_range" is the interpolation weight v ∈ [-1, 1] between log β̃_t and
    log β_t (Improved DDPM Eq. 15).
    """
    t = float(t)
    out = 0.8 * sample * (t / (t + 10)) + 0.1 * torch.sin(sample + t / 100)
    if variance_type == "learned":
        out = torch.cat([out, 0.02 * (1.5 + torch.tanh(sample))], dim=1)
    elif variance_type == "learned_range":
        out = torch.cat([out, torch.tanh(sample) * 0.9], dim=1)
    return out


def full_loop(scheduler, num_inference_steps: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    scheduler.set_timesteps(num_inference_steps)
    generator = torch.Generator().manual_seed(seed)
    sample = deterministic_sample()
    for t in scheduler.timesteps:
        out = scheduler.step(fake_model(sample, t, scheduler.config.variance_type), t, sample, generator=generator)
        sample = out.prev_sample
    return sample, out.pred_original_sample


def public(config) -> dict:
    """A scheduler config without diffusers' private bookkeeping keys (`_use_default_values`, ...)."""
    return {k: v for k, v in config.items() if not k.startswith("_")}


# ---------------------------------------------------------------------------------------------------------------------
# Same numbers as diffusers, over the whole grid of options
# ---------------------------------------------------------------------------------------------------------------------
GRID = list(itertools.product(BETA_SETTINGS, TIMESTEP_SPACINGS, [False, True]))


def grid_clippings(beta_setting: str, timestep_spacing: str, zero_snr: bool, variance_type: str,
                   prediction_type: str) -> list[dict]:
    """Two of the four SAMPLE_CLIPPING options for one grid point, rotating with every axis so that each beta
    setting meets each clipping with each (variance, prediction) pair, and so does each (spacing, zero-SNR) pair
    (test_grid_covers_every_clipping checks it). Clipping only changes x̂_0 (step part 3), before the variance is
    used, so the full product (3456 configurations, twice the time) would mostly repeat itself."""
    k = (list(BETA_SETTINGS).index(beta_setting) + 2 * TIMESTEP_SPACINGS.index(timestep_spacing) + int(zero_snr)
         + VARIANCE_TYPES.index(variance_type) + PREDICTION_TYPES.index(prediction_type))
    return [SAMPLE_CLIPPING[k % 4], SAMPLE_CLIPPING[(k + 2) % 4]]


def epsilon_from_pure_noise(scheduler) -> bool:
    """True where the loop is undefined: ε-prediction at zero terminal SNR, starting from t = T - 1, gives
    x̂_0 = (x_T - √(1-ᾱ_T) ε) / √ᾱ_T with √ᾱ_T = 0, a division by zero in both schedulers (x_T holds no signal, which
    is why Lin et al. 2023, arXiv 2305.08891 Sec. 3.2, pair zero SNR with v-prediction). Only `clip_sample` turns
    the ±inf into a finite ±range; dynamic thresholding (which takes precedence over it) takes a quantile of inf and
    stays non-finite."""
    config = scheduler.config
    clipped = config.clip_sample and not config.thresholding
    return (config.rescale_betas_zero_snr and config.prediction_type == "epsilon" and not clipped
            and int(scheduler.timesteps[0]) == config.num_train_timesteps - 1)


@pytest.mark.parametrize("beta_setting,timestep_spacing,rescale_betas_zero_snr", GRID)
def test_full_loop_matches_diffusers(beta_setting, timestep_spacing, rescale_betas_zero_snr):
    checked = undefined = 0
    for variance_type, prediction_type in itertools.product(VARIANCE_TYPES, PREDICTION_TYPES):
        for clipping in grid_clippings(
            beta_setting, timestep_spacing, rescale_betas_zero_snr, variance_type, prediction_type
        ):
            config = dict(
                **BETA_SETTINGS[beta_setting],
                timestep_spacing=timestep_spacing,
                rescale_betas_zero_snr=rescale_betas_zero_snr,
                variance_type=variance_type,
                prediction_type=prediction_type,
                steps_offset=1 if timestep_spacing == "leading" else 0,
                **clipping,
            )
            scheduler = DDPMScheduler(**config)
            ours = full_loop(scheduler)
            theirs = full_loop(diffusers.DDPMScheduler(**config))
            if epsilon_from_pure_noise(scheduler):
                # Undefined in both (see above); checked rather than assumed, so that the rule stays exact.
                assert not torch.isfinite(ours[0]).all() and not torch.isfinite(theirs[0]).all(), config
                undefined += 1
                continue
            if variance_type == "fixed_large_log" and not torch.isfinite(theirs[0]).any():
                # diffusers computes log(β_t) ** 0.5 here (NaN); ours follows the math, σ_t = exp(½ log β_t) = √β_t.
                theirs = full_loop(diffusers.DDPMScheduler(**{**config, "variance_type": "fixed_large"}))
            for a, b in zip(ours, theirs):
                assert torch.isfinite(a).all() and torch.isfinite(b).all(), config
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=lambda m: f"{config}: {m}")
            checked += 1
    assert checked + undefined == len(VARIANCE_TYPES) * len(PREDICTION_TYPES) * 2
    # Only zero-SNR ε-prediction from t = T - 1 is skipped, and never all of it (clip_sample keeps it finite).
    starts_at_last = timestep_spacing != "leading"
    assert undefined <= (len(VARIANCE_TYPES) * 2 if rescale_betas_zero_snr and starts_at_last else 0)


def test_grid_covers_every_clipping():
    """test_full_loop_matches_diffusers runs two clippings per point; over the grid, every clipping option meets
    every (beta setting, variance, prediction) and every (spacing, zero SNR, variance, prediction)."""
    by_schedule, by_spacing = set(), set()
    for (beta, spacing, zero_snr), variance, prediction in itertools.product(GRID, VARIANCE_TYPES, PREDICTION_TYPES):
        for clipping in grid_clippings(beta, spacing, zero_snr, variance, prediction):
            option = SAMPLE_CLIPPING.index(clipping)
            by_schedule.add((beta, variance, prediction, option))
            by_spacing.add((spacing, zero_snr, variance, prediction, option))
    options = len(SAMPLE_CLIPPING)
    assert len(by_schedule) == len(BETA_SETTINGS) * len(VARIANCE_TYPES) * len(PREDICTION_TYPES) * options
    assert len(by_spacing) == len(TIMESTEP_SPACINGS) * 2 * len(VARIANCE_TYPES) * len(PREDICTION_TYPES) * options


def test_fixed_large_log_is_finite_and_equals_fixed_large():
    ours_log = full_loop(DDPMScheduler(variance_type="fixed_large_log"))[0]
    ours_large = full_loop(DDPMScheduler(variance_type="fixed_large"))[0]
    assert torch.isfinite(ours_log).all()
    torch.testing.assert_close(ours_log, ours_large, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("beta_schedule", BETA_SCHEDULES)
def test_schedule_tables_match_diffusers(beta_schedule):
    for zero_snr in (False, True):
        ours = DDPMScheduler(beta_schedule=beta_schedule, rescale_betas_zero_snr=zero_snr)
        theirs = diffusers.DDPMScheduler(beta_schedule=beta_schedule, rescale_betas_zero_snr=zero_snr)
        for name in ("betas", "alphas", "alphas_cumprod", "timesteps"):
            torch.testing.assert_close(getattr(ours, name), getattr(theirs, name), rtol=1e-6, atol=1e-7)


def test_trained_betas_match_diffusers():
    betas = np.linspace(1e-4, 0.03, 50) ** 1.2
    ours, theirs = DDPMScheduler(num_train_timesteps=50, trained_betas=betas), diffusers.DDPMScheduler(
        num_train_timesteps=50, trained_betas=betas
    )
    torch.testing.assert_close(ours.alphas_cumprod, theirs.alphas_cumprod)
    for a, b in zip(full_loop(ours, 7), full_loop(theirs, 7)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("spacing", TIMESTEP_SPACINGS)
@pytest.mark.parametrize("num_inference_steps", [1, 3, 7, 50, 333, 1000])
def test_set_timesteps_and_previous_timestep_match_diffusers(spacing, num_inference_steps):
    ours = DDPMScheduler(timestep_spacing=spacing, steps_offset=1 if spacing == "leading" else 0)
    theirs = diffusers.DDPMScheduler(timestep_spacing=spacing, steps_offset=1 if spacing == "leading" else 0)
    theirs.set_timesteps(num_inference_steps)
    if theirs.timesteps[0] >= 1000:  # 1000 'leading' steps + offset 1: a schedule diffusers cannot step, ours refuses
        with pytest.raises(ValueError, match="past the last trained one"):
            ours.set_timesteps(num_inference_steps)
        return
    ours.set_timesteps(num_inference_steps)
    assert torch.equal(ours.timesteps, theirs.timesteps)
    for t in ours.timesteps[:20]:
        assert int(ours.previous_timestep(t)) == int(theirs.previous_timestep(t))


def test_custom_timesteps_match_diffusers():
    custom = [999, 800, 500, 120, 3, 0]
    ours, theirs = DDPMScheduler(), diffusers.DDPMScheduler()
    ours.set_timesteps(timesteps=custom)
    theirs.set_timesteps(timesteps=custom)
    assert ours.timesteps.tolist() == custom and ours.custom_timesteps
    assert [int(ours.previous_timestep(t)) for t in custom] == [int(theirs.previous_timestep(t)) for t in custom]
    for a, b in zip(full_loop_custom(ours, custom), full_loop_custom(theirs, custom)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def full_loop_custom(scheduler, custom):
    scheduler.set_timesteps(timesteps=custom)
    generator, sample = torch.Generator().manual_seed(1), deterministic_sample()
    for t in scheduler.timesteps:
        out = scheduler.step(fake_model(sample, t), t, sample, generator=generator)
        sample = out.prev_sample
    return sample, out.pred_original_sample


def test_step_without_set_timesteps_and_tuple_output_match_diffusers():
    ours, theirs = DDPMScheduler(), diffusers.DDPMScheduler()
    sample = deterministic_sample()
    for t in (999, 500, 1, 0):
        a = ours.step(fake_model(sample, t), t, sample, generator=torch.Generator().manual_seed(3), return_dict=False)
        b = theirs.step(fake_model(sample, t), t, sample, generator=torch.Generator().manual_seed(3), return_dict=False)
        assert isinstance(a, tuple) and len(a) == 2
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_add_noise_and_get_velocity_match_diffusers(dtype):
    ours, theirs = DDPMScheduler(beta_schedule="scaled_linear"), diffusers.DDPMScheduler(beta_schedule="scaled_linear")
    x0 = deterministic_sample().to(dtype)
    noise = torch.randn(SAMPLE_SHAPE, generator=torch.Generator().manual_seed(2)).to(dtype)
    for timesteps in (torch.tensor([0, 999]), torch.tensor([417, 417]), torch.tensor(5)):
        assert torch.equal(ours.add_noise(x0, noise, timesteps), theirs.add_noise(x0, noise, timesteps))
        assert torch.equal(ours.get_velocity(x0, noise, timesteps), theirs.get_velocity(x0, noise, timesteps))


def test_public_surface_matches_diffusers():
    ours, theirs = DDPMScheduler(), diffusers.DDPMScheduler()
    assert public(ours.config) == public(theirs.config)
    assert len(ours) == len(theirs) == 1000
    assert ours.order == theirs.order == 1
    assert ours.init_noise_sigma == theirs.init_noise_sigma == 1.0
    sample = deterministic_sample()
    assert ours.scale_model_input(sample, 10) is sample
    assert {c.__name__ for c in ours.compatibles} == {c.__name__ for c in theirs.compatibles}
    for name in ("set_timesteps", "step", "add_noise", "get_velocity", "scale_model_input", "previous_timestep"):
        assert callable(getattr(ours, name))


# ---------------------------------------------------------------------------------------------------------------------
# Config files move both ways
# ---------------------------------------------------------------------------------------------------------------------
def test_from_config_swaps_both_ways(tmp_path):
    ours = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type="v_prediction")
    ddim = diffusers.DDIMScheduler.from_config(ours.config)
    assert isinstance(ddim, diffusers.DDIMScheduler)
    assert ddim.config.prediction_type == "v_prediction" and ddim.config.beta_end == 0.012
    torch.testing.assert_close(ddim.alphas_cumprod, ours.alphas_cumprod)

    theirs = diffusers.DDPMScheduler(beta_schedule="squaredcos_cap_v2", variance_type="fixed_large", clip_sample=False)
    back = DDPMScheduler.from_config(theirs.config)
    assert isinstance(back, DDPMScheduler) and public(back.config) == public(theirs.config)
    assert DDPMScheduler.from_config(diffusers.DPMSolverMultistepScheduler().config).config.beta_schedule == "linear"

    ours.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "scheduler_config.json").read_text())
    assert saved["_class_name"] == "DDPMScheduler" and saved["prediction_type"] == "v_prediction"
    assert public(diffusers.DDPMScheduler.from_pretrained(tmp_path).config) == public(ours.config)
    assert public(DDPMScheduler.from_pretrained(tmp_path).config) == public(ours.config)


# ---------------------------------------------------------------------------------------------------------------------
# The paper, independently of diffusers
# ---------------------------------------------------------------------------------------------------------------------
def test_epsilon_step_is_eq11_plus_posterior_noise():
    """Without clipping, μ̃_t(x_t, x̂_0(ε)) (Eq. 7 with Eq. 15) equals Eq. 11:
    μ_θ = (x_t - β_t / √(1-ᾱ_t) · ε_θ) / √α_t, and the noise has the posterior variance β̃_t (Eq. 7)."""
    scheduler = DDPMScheduler(clip_sample=False)
    x_t, eps = deterministic_sample(), torch.randn(SAMPLE_SHAPE, generator=torch.Generator().manual_seed(5))
    for t in (999, 400, 1):
        beta, alpha, abar, abar_prev = (
            scheduler.betas[t], scheduler.alphas[t], scheduler.alphas_cumprod[t], scheduler.alphas_cumprod[t - 1]
        )
        mean = (x_t - beta / (1 - abar).sqrt() * eps) / alpha.sqrt()
        posterior_std = ((1 - abar_prev) / (1 - abar) * beta).sqrt()
        z = torch.randn(SAMPLE_SHAPE, generator=torch.Generator().manual_seed(t))
        out = scheduler.step(eps, t, x_t, generator=torch.Generator().manual_seed(t)).prev_sample
        torch.testing.assert_close(out, mean + posterior_std * z, rtol=1e-4, atol=1e-5)
    # Last step: no noise (Algorithm 2, z = 0 when t = 1).
    out = scheduler.step(eps, 0, x_t, generator=torch.Generator().manual_seed(0)).prev_sample
    mean = (x_t - scheduler.betas[0] / (1 - scheduler.alphas_cumprod[0]).sqrt() * eps) / scheduler.alphas[0].sqrt()
    torch.testing.assert_close(out, mean, rtol=1e-4, atol=1e-5)


def test_add_noise_has_eq4_moments():
    scheduler = DDPMScheduler()
    x0 = torch.full((200_000,), 0.7)
    noise = torch.randn(200_000, generator=torch.Generator().manual_seed(0))
    t = torch.full((200_000,), 300)
    x_t = scheduler.add_noise(x0, noise, t)
    abar = scheduler.alphas_cumprod[300]
    assert abs(x_t.mean() - abar.sqrt() * 0.7) < 0.01
    assert abs(x_t.var() - (1 - abar)) < 0.01


def test_v_prediction_recovers_x0_exactly():
    """With the true v the step's x̂_0 is x_0: x̂_0 = √ᾱ_t x_t - √(1-ᾱ_t) v."""
    scheduler = DDPMScheduler(prediction_type="v_prediction", clip_sample=False)
    x0, noise = deterministic_sample(), torch.randn(SAMPLE_SHAPE, generator=torch.Generator().manual_seed(9))
    t = torch.tensor([600])
    x_t = scheduler.add_noise(x0, noise, t)
    v = scheduler.get_velocity(x0, noise, t)
    x0_hat = scheduler.step(v, 600, x_t, generator=torch.Generator().manual_seed(0)).pred_original_sample
    torch.testing.assert_close(x0_hat, x0, rtol=1e-4, atol=1e-4)


def test_zero_terminal_snr_and_cosine_schedule_endpoints():
    zsnr = DDPMScheduler(beta_schedule="scaled_linear", rescale_betas_zero_snr=True)
    assert zsnr.alphas_cumprod[-1] == 0
    torch.testing.assert_close(zsnr.alphas_cumprod[0], DDPMScheduler(beta_schedule="scaled_linear").alphas_cumprod[0])
    cosine = DDPMScheduler(beta_schedule="squaredcos_cap_v2")
    assert cosine.betas.max() <= 0.999 and torch.all(cosine.alphas_cumprod[1:] < cosine.alphas_cumprod[:-1])


# ---------------------------------------------------------------------------------------------------------------------
# Bad input: ValueError naming the argument, the value and what is accepted
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"beta_schedule": "cubic"}, r"`beta_schedule`: 'cubic' is not supported; choose one of 'linear'"),
        ({"variance_type": "huge"}, r"`variance_type`: 'huge' is not supported; choose one of 'fixed_small'"),
        ({"prediction_type": "x0"}, r"`prediction_type`: 'x0' is not supported; choose one of 'epsilon'"),
        ({"timestep_spacing": "even"}, r"`timestep_spacing`: 'even' is not supported; choose one of 'linspace'"),
        ({"num_train_timesteps": 0}, r"`num_train_timesteps`: 0 must be a positive integer"),
        ({"num_train_timesteps": 10, "trained_betas": [0.1] * 9}, r"`trained_betas`: got shape \(9,\); expected \(10,\)"),
    ],
)
def test_constructor_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DDPMScheduler(**kwargs)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"num_inference_steps": 2000}, r"`num_inference_steps`: 2000 cannot be larger than `num_train_timesteps`: 1000"),
        ({"num_inference_steps": 0}, r"`num_inference_steps`: 0 must be a positive integer"),
        ({"num_inference_steps": 10, "timesteps": [5, 1]}, r"either `num_inference_steps` \(10\) or `timesteps` \(\[5, 1\]\)"),
        ({}, r"Pass one of `num_inference_steps`"),
        ({"timesteps": [10, 20, 5]}, r"`timesteps` must be strictly descending; got 10 followed by 20"),
        ({"timesteps": [10, 10]}, r"strictly descending; got 10 followed by 10"),
        ({"timesteps": [1000, 5]}, r"`timesteps` must lie in \[0, num_train_timesteps - 1\] = \[0, 999\]; got 1000..5"),
        ({"timesteps": [5, -1]}, r"must lie in \[0, num_train_timesteps - 1\]"),
        ({"timesteps": []}, r"`timesteps`: got an empty list"),
    ],
)
def test_set_timesteps_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DDPMScheduler().set_timesteps(**kwargs)


def test_leading_steps_that_pass_the_last_trained_timestep_are_named_before_sampling():
    # diffusers' DDPMScheduler takes 1,000 'leading' steps with steps_offset=1 and fails in `step` (IndexError on
    # alphas_cumprod[1000]); ours says so in `set_timesteps`. 999 steps start at 999 in both.
    scheduler = DDPMScheduler(steps_offset=1, timestep_spacing="leading")
    with pytest.raises(ValueError, match=r"`num_inference_steps`: 1000 with 'leading' spacing and `steps_offset`: 1 "
                                         r"starts at timestep 1000, past the last trained one \(999\); use at most 999"):
        scheduler.set_timesteps(1000)
    scheduler.set_timesteps(999)
    theirs = diffusers.DDPMScheduler(steps_offset=1, timestep_spacing="leading")
    theirs.set_timesteps(999)
    assert scheduler.timesteps[0] == 999 and torch.equal(scheduler.timesteps, theirs.timesteps)


def test_step_errors():
    scheduler = DDPMScheduler(variance_type="learned")
    scheduler.set_timesteps(10)
    sample = deterministic_sample()
    with pytest.raises(ValueError, match=r"`variance_type`: 'learned' needs the model to predict the variance"):
        scheduler.step(sample, scheduler.timesteps[0], sample)
    with pytest.raises(ValueError, match=r"`timestep`: 17 is not one of the scheduler's timesteps"):
        scheduler.step(sample, 17, sample)
