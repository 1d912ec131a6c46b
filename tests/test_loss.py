import pytest
import torch

from pipelines import DDPMScheduler
from training.loss import compute_snr, diffusion_loss, min_snr_weights, training_target


def test_snr_is_alpha_bar_over_one_minus_alpha_bar():
    scheduler = DDPMScheduler()
    t = torch.tensor([0, 10, 500, 999])
    abar = scheduler.alphas_cumprod[t]
    torch.testing.assert_close(compute_snr(scheduler, t), abar / (1 - abar))
    assert torch.all(compute_snr(scheduler, torch.arange(1, 1000)) < compute_snr(scheduler, torch.arange(0, 999)))


@pytest.mark.parametrize(
    "prediction_type,expected",
    [
        # x0-space weight min(SNR, γ) divided by each parameterisation's implicit weight (arXiv 2303.09556).
        ("epsilon", lambda snr, g: torch.minimum(snr, torch.full_like(snr, g)) / snr),
        ("v_prediction", lambda snr, g: torch.minimum(snr, torch.full_like(snr, g)) / (snr + 1)),
        ("sample", lambda snr, g: torch.minimum(snr, torch.full_like(snr, g))),
    ],
)
def test_min_snr_weights(prediction_type, expected):
    snr = torch.tensor([0.01, 0.5, 5.0, 50.0, 5000.0])
    torch.testing.assert_close(min_snr_weights(snr, 5.0, prediction_type), expected(snr, 5.0))


def test_min_snr_epsilon_weight_is_one_at_zero_terminal_snr():
    weights = min_snr_weights(torch.tensor([0.0, 1e-3, 100.0]), 5.0, "epsilon")
    assert torch.isfinite(weights).all()
    torch.testing.assert_close(weights, torch.tensor([1.0, 1.0, 0.05]))


def test_min_snr_equalises_x0_space_weight_across_parameterisations():
    """For every prediction type, weight × (MSE in that space) = min(SNR, γ) × (MSE in x0 space)."""
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    x0 = torch.randn(64, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(64, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    t = torch.randint(0, 1000, (64,), generator=torch.Generator().manual_seed(2))
    x_t = scheduler.add_noise(x0, noise, t)
    x0_hat = x0 + 0.1 * torch.randn(x0.shape, generator=torch.Generator().manual_seed(3))  # an imperfect model
    abar = scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    eps_hat = (x_t - abar.sqrt() * x0_hat) / (1 - abar).sqrt()
    predictions = {"sample": x0_hat, "epsilon": eps_hat, "v_prediction": abar.sqrt() * eps_hat - (1 - abar).sqrt() * x0_hat}
    snr = compute_snr(scheduler, t)
    reference = torch.minimum(snr, torch.tensor(5.0)) * ((x0_hat - x0) ** 2).mean(dim=(1, 2, 3))
    for prediction_type, pred in predictions.items():
        scheduler.register_to_config(prediction_type=prediction_type)
        target = training_target(scheduler, x0, noise, t)
        per_sample = ((pred - target) ** 2).mean(dim=(1, 2, 3))
        torch.testing.assert_close(per_sample * min_snr_weights(snr, 5.0, prediction_type), reference, rtol=1e-3, atol=1e-5)


def test_diffusion_loss_plain_and_weighted():
    scheduler = DDPMScheduler()
    pred, target = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    t = torch.tensor([5, 400, 900])
    torch.testing.assert_close(diffusion_loss(pred, target, t, scheduler), ((pred - target) ** 2).mean())
    per_sample = ((pred - target) ** 2).mean(dim=(1, 2, 3))
    weights = min_snr_weights(compute_snr(scheduler, t), 5.0, "epsilon")
    torch.testing.assert_close(diffusion_loss(pred, target, t, scheduler, snr_gamma=5.0), (per_sample * weights).mean())
    assert diffusion_loss(pred.bfloat16(), target.bfloat16(), t, scheduler).dtype == torch.float32


def test_targets():
    scheduler = DDPMScheduler(prediction_type="v_prediction")
    x0, noise, t = torch.randn(2, 4, 2, 2), torch.randn(2, 4, 2, 2), torch.tensor([3, 700])
    torch.testing.assert_close(training_target(scheduler, x0, noise, t), scheduler.get_velocity(x0, noise, t))
    assert training_target(DDPMScheduler(), x0, noise, t) is noise
    assert training_target(DDPMScheduler(prediction_type="sample"), x0, noise, t) is x0
