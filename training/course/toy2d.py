"""Denoising diffusion on 2-D toy data: the course's moons, swiss roll and S-curve demos.

A small MLP ε_θ(x_t, t) is trained with Algorithm 1 of Ho et al. 2020 (arXiv 2006.11239) through our
`DDPMScheduler`, sampled with Algorithm 2 (`scheduler.step`), drawn as forward / reverse snapshot strips, and scored
by the energy distance between generated and fresh data points, next to the same distance between two independent
data samples (the finite-sample floor). `scripts/toy2d.py` is the command-line entry point; docs/toy2d.md has the
measured numbers and why the defaults are what they are.

Everything random is drawn from one seed (numpy `Generator` for data, `torch.Generator` for the rest) and torch runs
on `num_threads` threads, so the same config gives the same numbers on the same machine.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.models.embeddings import Timesteps
from diffusers.optimization import get_cosine_schedule_with_warmup
from diffusers.utils import logging
from torch import nn
from tqdm.auto import tqdm

from pipelines import DDPMScheduler

logger = logging.get_logger(__name__)

DATASETS = ("moons", "swiss_roll", "s_curve")
BETA_SCHEDULES = ("squaredcos_cap_v2", "linear")
MIN_TIMESTEPS, MAX_TIMESTEPS = 100, 1000
SAMPLING_CHUNK = 4096  # points per forward pass when sampling: activations stay in cache, ~2x faster than 25,000
NUM_SNAPSHOTS = 10  # panels per figure, data → noise and noise → data
PANEL_INCHES, FIGURE_HEIGHT_INCHES, FIGURE_DPI = 1.8, 2.1, 100
FIGURE_SIZE = (round(NUM_SNAPSHOTS * PANEL_INCHES * FIGURE_DPI), round(FIGURE_HEIGHT_INCHES * FIGURE_DPI))  # pixels
AXIS_LIMIT = 3.2  # every panel shows [-3.2, 3.2]²: the normalised data and nearly all of N(0, I)


# ----------------------------------------------------------------------------------------------------------------
# Data: sklearn's generators re-implemented in numpy, then a fixed affine normalisation
# ----------------------------------------------------------------------------------------------------------------
def make_moons(n: int, rng: np.random.Generator, noise: float = 0.05) -> np.ndarray:
    """Two interleaving half circles (sklearn's `make_moons`), the angle drawn uniformly rather than on a grid so
    that every point is i.i.d.; noise 0.05 as in the course's DDPM code."""
    outer = rng.random(n) < 0.5
    angle = rng.random(n) * np.pi
    x = np.where(outer, np.cos(angle), 1 - np.cos(angle))
    y = np.where(outer, np.sin(angle), 0.5 - np.sin(angle))
    return np.stack([x, y], axis=1) + noise * rng.standard_normal((n, 2))


def make_swiss_roll(n: int, rng: np.random.Generator, noise: float = 0.1) -> np.ndarray:
    """sklearn's `make_swiss_roll` projected on (x, z), the spiral of the course figures: t ~ U[1.5π, 4.5π],
    (t cos t, t sin t), noise 0.1 as in the course's code (there on all three axes, here on the two we keep)."""
    t = 1.5 * np.pi * (1 + 2 * rng.random(n))
    return np.stack([t * np.cos(t), t * np.sin(t)], axis=1) + noise * rng.standard_normal((n, 2))


def make_s_curve(n: int, rng: np.random.Generator, noise: float = 0.1) -> np.ndarray:
    """sklearn's `make_s_curve` projected on (x, z), the "S" of the course figures: t ~ U[-1.5π, 1.5π],
    (sin t, sign(t)(cos t - 1)), noise 0.1 as in the course's code."""
    t = 3 * np.pi * (rng.random(n) - 0.5)
    return np.stack([np.sin(t), np.sign(t) * (np.cos(t) - 1)], axis=1) + noise * rng.standard_normal((n, 2))


_GENERATORS = {"moons": make_moons, "swiss_roll": make_swiss_roll, "s_curve": make_s_curve}
# (centre, scale) per dataset: the raw generator's mean and √(mean per-axis variance), measured once on 4M points
# (the means also follow in closed form). A fixed map, rather than standardising each draw, keeps every draw i.i.d.
# from one distribution; one scale for both axes keeps the shape's aspect ratio. The result has mean ≈ 0 and
# per-axis variances averaging ≈ 1, the scale DDPM's N(0, I) prior and β schedule assume.
_NORMALISATION = {
    "moons": ((0.5, 0.25), 0.71),
    "swiss_roll": ((2.0, 0.21), 6.8),
    "s_curve": ((0.0, 0.0), 1.1),
}


def sample_data(dataset: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` i.i.d. normalised points of `dataset`, float32 of shape (n, 2)."""
    if dataset not in _GENERATORS:
        raise ValueError(f"`dataset`: {dataset!r} is not supported; choose one of {', '.join(DATASETS)}.")
    centre, scale = _NORMALISATION[dataset]
    points = (_GENERATORS[dataset](n, rng) - np.asarray(centre)) / scale
    return points.astype(np.float32)


# ----------------------------------------------------------------------------------------------------------------
# Model: ε_θ(x_t, t)
# ----------------------------------------------------------------------------------------------------------------
class NoisePredictor(nn.Module):
    """ε_θ(x_t, t): an MLP on [x, sinusoidal features of each coordinate of x], whose every hidden layer adds a
    projection of the sinusoidal embedding of t: h ← SiLU(W h + V emb(t) + b), a linear layer on [h, emb(t)] split
    so that emb(t) is projected once per sampling step rather than once per point.

    Both embeddings are diffusers' `Timesteps` (the DDPM U-Net's, Ho et al. 2020 Sec. 4, after the Transformer).
    For t: neighbouring timesteps get nearby features, so all T of them share what the net learns; it is fed
    t·1000/T so that its frequencies (made for 0..999) span the same range for any T. For x (Fourier features,
    Tancik et al. 2020, arXiv 2006.10739): a plain MLP on two coordinates is slow to learn the sharp turns of a
    curve 0.07 wide; scaled by 25, the features resolve ~0.1. Measured on moons (defaults, seed 0): ratio 1.45
    without them, 1.04 with them (docs/toy2d.md).
    """

    def __init__(
        self,
        hidden_size: int = 128,
        num_layers: int = 3,
        embed_dim: int = 32,
        num_train_timesteps: int = 1000,
        input_scale: float = 25.0,
    ):
        super().__init__()
        self.time_scale = 1000 / num_train_timesteps
        self.input_scale = input_scale
        self.input_proj = Timesteps(embed_dim, flip_sin_to_cos=True, downscale_freq_shift=0)  # each coordinate
        self.time_proj = Timesteps(embed_dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        input_size = 2 + 2 * embed_dim
        self.layers = nn.ModuleList(
            nn.Linear(input_size if i == 0 else hidden_size, hidden_size) for i in range(num_layers)
        )
        self.time_layers = nn.ModuleList(nn.Linear(embed_dim, hidden_size, bias=False) for _ in range(num_layers))
        self.out = nn.Linear(hidden_size, 2)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        """`sample` (n, 2); `timestep` a scalar (one t for all, as in sampling) or (n,) (one per point, training)."""
        t_emb = self.time_proj(timestep.reshape(-1) * self.time_scale).to(sample.dtype)  # (1 or n, embed_dim)
        scaled = sample * self.input_scale
        hidden = torch.cat([sample, self.input_proj(scaled[:, 0]), self.input_proj(scaled[:, 1])], dim=1)
        for layer, time_layer in zip(self.layers, self.time_layers):
            hidden = F.silu(layer(hidden) + time_layer(t_emb))
        return self.out(hidden)


def make_scheduler(num_train_timesteps: int = 100, beta_schedule: str = "squaredcos_cap_v2") -> DDPMScheduler:
    """Our DDPMScheduler for unit-scale 2-D data.

    "squaredcos_cap_v2" (cosine, Improved DDPM, arXiv 2102.09672) by default: ᾱ_t falls gradually over all T steps,
    whereas with Ho et al.'s linear β nearly half of them (47 of 100) have ᾱ_t < 0.05, close to pure noise, and
    leave fewer steps to shape the data (moons, defaults: ratio 1.25 linear, 1.04 cosine).
    "linear" keeps Ho et al.'s β_1 = 1e-4, β_T = 0.02 at T = 1000 and scales both by 1000/T for other T (Improved
    DDPM's rule), so that ᾱ_T ≈ 4e-5 for any T: the course code's T = 100 with unscaled betas ends at ᾱ_T ≈ 0.37.

    σ_t² = β_t ("fixed_large"): the course code's choice and one of the two of Ho et al. (Sec. 3.2, "similar
    results"); at T = 100 the other, β̃_t, left samples ~1% too concentrated, which the distance sees (moons 1.18
    against 1.04). `clip_sample=False`: clamping x̂_0 to [-1, 1] would cut off the data (it reaches ±2).
    """
    if beta_schedule not in BETA_SCHEDULES:
        raise ValueError(
            f"`beta_schedule`: {beta_schedule!r} is not supported; choose one of {', '.join(BETA_SCHEDULES)}."
        )
    scale = 1000 / num_train_timesteps
    return DDPMScheduler(
        num_train_timesteps=num_train_timesteps,
        beta_start=1e-4 * scale,
        beta_end=0.02 * scale,
        beta_schedule=beta_schedule,
        variance_type="fixed_large",
        clip_sample=False,
    )


# ----------------------------------------------------------------------------------------------------------------
# Algorithm 1 (training) and Algorithm 2 (sampling)
# ----------------------------------------------------------------------------------------------------------------
def train(
    model: NoisePredictor,
    scheduler: DDPMScheduler,
    dataset: str,
    train_steps: int,
    batch_size: int = 512,
    learning_rate: float = 2e-3,
    seed: int = 0,
    progress: bool = True,
) -> list[float]:
    """Algorithm 1 on fresh data every step (the generators are infinite, so nothing can overfit); returns the loss
    per step. AdamW with a cosine decay to 0, which settles the weights at the end like an EMA would, for free."""
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.0)
    lr_scheduler = get_cosine_schedule_with_warmup(optimizer, num_warmup_steps=min(100, train_steps // 10),
                                                   num_training_steps=train_steps)
    num_train_timesteps = scheduler.config.num_train_timesteps
    losses = []
    model.train()
    for _ in tqdm(range(train_steps), desc=f"train {dataset}", disable=not progress, mininterval=0.5):
        clean = torch.from_numpy(sample_data(dataset, batch_size, rng))  # x_0 ~ q(x_0)
        # t ~ U{1..T}; the scheduler counts from 0, so index t - 1 (add_noise(index) uses ᾱ_t).
        timesteps = torch.randint(0, num_train_timesteps, (batch_size,), generator=generator)
        noise = torch.randn(clean.shape, generator=generator)  # ε ~ N(0, I)
        noisy = scheduler.add_noise(clean, noise, timesteps)  # x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε (Eq. 4)
        loss = F.mse_loss(model(noisy, timesteps), noise)  # ‖ε - ε_θ(x_t, t)‖² (Eq. 14)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        lr_scheduler.step()
        losses.append(loss.item())
    model.eval()
    return losses


def snapshot_times(num_train_timesteps: int, num: int = NUM_SNAPSHOTS) -> list[int]:
    """`num` times from 0 (data) to T (noise), evenly spaced, in the paper's 1-based time (x_0 is the data)."""
    return [round(k * num_train_timesteps / (num - 1)) for k in range(num)]


@torch.no_grad()
def sample(
    model: NoisePredictor, scheduler: DDPMScheduler, num_samples: int, generator: torch.Generator
) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """Algorithm 2 over all T steps. Returns x_0 and snapshots {t: x_t} at `snapshot_times` (x_T included)."""
    num_train_timesteps = scheduler.config.num_train_timesteps
    keep = set(snapshot_times(num_train_timesteps))
    scheduler.set_timesteps(num_train_timesteps)
    latents = torch.randn((num_samples, 2), generator=generator) * scheduler.init_noise_sigma  # x_T ~ N(0, I)
    snapshots = {num_train_timesteps: latents}
    for t in scheduler.timesteps:
        noise_pred = torch.cat([model(chunk, t) for chunk in latents.split(SAMPLING_CHUNK)])
        latents = scheduler.step(noise_pred, t, latents, generator=generator).prev_sample
        # The scheduler's timesteps are 0-based: the step at index t is the paper's x_{t+1} → x_t.
        if int(t) in keep:
            snapshots[int(t)] = latents
    return latents, snapshots


def forward_snapshots(
    clean: torch.Tensor, scheduler: DDPMScheduler, generator: torch.Generator
) -> dict[int, torch.Tensor]:
    """Samples of q(x_t | x_0) (Eq. 4) at `snapshot_times`, x_0 itself at t = 0."""
    snapshots = {}
    for t in snapshot_times(scheduler.config.num_train_timesteps):
        if t == 0:
            snapshots[t] = clean
            continue
        noise = torch.randn(clean.shape, generator=generator)
        snapshots[t] = scheduler.add_noise(clean, noise, torch.full((len(clean),), t - 1))
    return snapshots


# ----------------------------------------------------------------------------------------------------------------
# Distance between point clouds
# ----------------------------------------------------------------------------------------------------------------
NUM_PROJECTIONS = 64  # directions for the energy distance: within 1e-3 of the pairwise definition (tested)


def _energy_statistics(
    x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray, num_projections: int = NUM_PROJECTIONS
) -> tuple[float, float, float]:
    """E(X, Y) of `energy_distance`, and δ̂ = mean |x_i - x_i'| over pairs i ≠ i' for each cloud, from one merged
    sort of the projections per direction. In 1-D, sorted, Σ_{i<i'} (x_(i') - x_(i)) = Σ_k (2k - n - 1) x_(k)."""
    angles = (torch.arange(num_projections, dtype=torch.float64) + 0.5) * math.pi / num_projections
    directions = torch.stack([angles.cos(), angles.sin()], dim=1)  # u_θ, θ at the midpoints of [0, π)
    x = torch.as_tensor(x, dtype=torch.float64)
    y = torch.as_tensor(y, dtype=torch.float64)
    n, m = len(x), len(y)
    merged, order = (directions @ torch.cat([x, y]).T).sort(dim=1)  # (K, n + m)
    from_x = order < n
    # Sorted together, each point of x steps F_X up by 1/n and each point of y steps F_Y up by 1/m.
    steps = torch.where(from_x, 1 / n, -1 / m).to(torch.float64)
    cdf_difference = steps.cumsum(dim=1)[:, :-1]  # F_X - F_Y between consecutive points
    energy = 2 * (cdf_difference.square() * merged.diff(dim=1)).sum(dim=1)

    def mean_pairwise(sorted_points: torch.Tensor) -> torch.Tensor:
        k = sorted_points.shape[1]
        weights = 2 * torch.arange(1, k + 1, dtype=torch.float64) - k - 1
        return 2 * (sorted_points * weights).sum(dim=1) / (k * (k - 1))

    # A boolean mask keeps each row's order, so these are x's and y's projections, each sorted.
    delta_x = mean_pairwise(merged[from_x].reshape(num_projections, n))
    delta_y = mean_pairwise(merged[~from_x].reshape(num_projections, m))
    half_pi = math.pi / 2  # |z| = (π/2)·mean_θ |⟨u_θ, z⟩| in the plane
    return (float(energy.mean() * half_pi), float(delta_x.mean() * half_pi), float(delta_y.mean() * half_pi))


def energy_distance(
    x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray, num_projections: int = NUM_PROJECTIONS
) -> float:
    """Squared energy distance (Székely & Rizzo 2013) between two 2-D point clouds, as the V-statistic

        E(X, Y) = 2 mean|x_i - y_j| - mean|x_i - x_i'| - mean|y_j - y_j'|,   all pairs, i = i' included.

    It is ≥ 0, exactly 0 for identical clouds, and its population version is 0 only for equal distributions. For two
    independent n-samples of one distribution the diagonal zeros give it a positive expected value, 2 E|X - X'| / n:
    the floor that `evaluate` measures against.

    Computed without the n·m distance matrix, through two identities: in the plane |z| = (π/2)·mean_θ |⟨u_θ, z⟩|
    over directions u_θ, θ uniform in [0, π), so E(X, Y) is π/2 times the mean over θ of the 1-D statistic of the
    projections; and in 1-D that statistic is exactly 2∫(F_X - F_Y)² for the empirical CDFs (Cramér), one
    merged sort. The mean over θ is the midpoint rule on `num_projections` angles; O(n log n) per angle, float64.
    """
    return _energy_statistics(x, y, num_projections)[0]


def evaluate(generated: torch.Tensor, data: torch.Tensor | np.ndarray, num_samples: int) -> dict:
    """The energy distance between `num_samples` generated points and as many fresh data points, next to the floor:
    the same distance between two independent data samples of that size. Both are expected values, estimated from
    all of `generated` (N points) and `data` (M points, independent of training), because one draw of either is
    too noisy to compare with 1.5: at 5,000 points a side the statistic's relative spread is about 50-90% (its
    null distribution is a weighted sum of χ² variables, dominated by a few), so perfect samples would score
    anywhere from 0.4 to 2.5 times the floor, one draw against another.

    With D² = 2E|G - X| - δ_G - δ_X the population distance and δ = E|X - X'|, an n-point V-statistic has
        E[E(G_n, X_n)] = D² + (δ_G + δ_X) / n,        E[E(X_n, X'_n)] = 2 δ_X / n.
    D² is estimated without bias by E(G_N, X_M) - δ̂_G / N - δ̂_X / M, the δ's as means over pairs i ≠ i'. With
    N = M = n the distance below is exactly the plain statistic of one draw.
    """
    n = num_samples
    num_generated, num_data = len(generated), len(data)
    pooled, delta_generated, delta_data = _energy_statistics(generated, data)
    distance = pooled + delta_generated * (1 / n - 1 / num_generated) + delta_data * (1 / n - 1 / num_data)
    floor = 2 * delta_data / n
    return {
        "distance": distance,
        "floor": floor,
        "ratio": distance / floor,
        "population_distance": pooled - delta_generated / num_generated - delta_data / num_data,  # D̂², ≈ 0 ideally
        "mean_pairwise_distance": {"generated": delta_generated, "data": delta_data},  # δ_G vs δ_X: the spread
        "num_generated": num_generated,
        "num_data": num_data,
    }


# ----------------------------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------------------------
def plot_snapshots(snapshots: dict[int, torch.Tensor], path: str | Path, title: str, order: str = "ascending") -> None:
    """One row of scatter plots, one per snapshot, t increasing ("ascending": data → noise) or decreasing."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # Agg only, no pyplot state: safe headless
    from matplotlib.figure import Figure

    times = sorted(snapshots, reverse=order != "ascending")
    figure = Figure(figsize=(FIGURE_SIZE[0] / FIGURE_DPI, FIGURE_SIZE[1] / FIGURE_DPI), dpi=FIGURE_DPI)
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(times))
    for ax, t in zip(axes, times):
        points = snapshots[t].numpy()
        ax.scatter(points[:, 0], points[:, 1], s=1, alpha=0.4, color="tab:blue", edgecolors="none", rasterized=True)
        ax.set_xlim(-AXIS_LIMIT, AXIS_LIMIT)
        ax.set_ylim(-AXIS_LIMIT, AXIS_LIMIT)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"$x_{{{t}}}$", fontsize=10)
    figure.suptitle(title, fontsize=11)
    figure.subplots_adjust(left=0.005, right=0.995, bottom=0.02, top=0.78, wspace=0.05)
    figure.savefig(path, dpi=FIGURE_DPI)


# ----------------------------------------------------------------------------------------------------------------
# One run: config → train → sample → score → files
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class Toy2DConfig:
    """Everything a run depends on; saved into metrics.json so that every run can be repeated."""

    dataset: str = "moons"  # one of DATASETS
    output_dir: str = "toy2d"  # forward.png, reverse.png and metrics.json go here
    num_train_timesteps: int = 100  # T, 100–1000; the course's 100: sampling costs T·num_generated model calls
    beta_schedule: str = "squaredcos_cap_v2"  # cosine (see make_scheduler), or Ho et al.'s "linear" scaled to T
    train_steps: int = 4000  # Algorithm 1 steps: each dataset within 1.5x of the floor in about a minute
    batch_size: int = 512
    learning_rate: float = 2e-3  # peak of AdamW, cosine-decayed to 0
    hidden_size: int = 128
    num_layers: int = 3
    num_samples: int = 5000  # n: the distance is that of n generated points to n data points (and n figure points)
    num_generated: int = 25000  # N ≥ n generated points estimate it: ±0.1 on the ratio of perfect samples at 25,000
    num_data: int = 50000  # M ≥ n fresh data points (cheap, so more of them than generated)
    num_threads: int = 1  # torch threads: the MLP is too small to share; 2 ran 25x slower on 2 busy cores
    seed: int = 0
    progress: bool = True  # tqdm bar over training

    def __post_init__(self):
        if self.dataset not in DATASETS:
            raise ValueError(f"`dataset`: {self.dataset!r} is not supported; choose one of {', '.join(DATASETS)}.")
        if self.beta_schedule not in BETA_SCHEDULES:
            raise ValueError(
                f"`beta_schedule`: {self.beta_schedule!r} is not supported; choose one of {', '.join(BETA_SCHEDULES)}."
            )
        if not MIN_TIMESTEPS <= self.num_train_timesteps <= MAX_TIMESTEPS:
            raise ValueError(
                f"`num_train_timesteps`: {self.num_train_timesteps} is outside the supported range "
                f"[{MIN_TIMESTEPS}, {MAX_TIMESTEPS}]."
            )
        for key in ("train_steps", "batch_size", "hidden_size", "num_layers", "num_threads"):
            if getattr(self, key) < 1:
                raise ValueError(f"`{key}`: {getattr(self, key)} must be a positive integer.")
        if self.num_samples < 2:
            raise ValueError(f"`num_samples`: {self.num_samples} must be at least 2.")
        for key in ("num_generated", "num_data"):
            if getattr(self, key) < self.num_samples:
                raise ValueError(
                    f"`{key}`: {getattr(self, key)} must be at least `num_samples`: {self.num_samples}."
                )
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"`learning_rate`: {self.learning_rate} must be a positive finite number.")
        if Path(self.output_dir).exists() and not Path(self.output_dir).is_dir():
            raise ValueError(f"`output_dir`: {self.output_dir} exists and is not a folder.")


def build(config: Toy2DConfig) -> tuple[NoisePredictor, DDPMScheduler]:
    """The untrained model (initialised from `config.seed`) and its scheduler."""
    torch.manual_seed(config.seed)
    model = NoisePredictor(config.hidden_size, config.num_layers, num_train_timesteps=config.num_train_timesteps)
    return model, make_scheduler(config.num_train_timesteps, config.beta_schedule)


@contextlib.contextmanager
def _torch_threads(num_threads: int):
    """torch on `num_threads` threads inside, as before outside (so that callers such as tests are left alone)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def run(config: Toy2DConfig) -> dict:
    """Train, sample, score and draw; writes forward.png, reverse.png and metrics.json and returns the metrics.
    Every number in them but `seconds` is a function of the config alone."""
    with _torch_threads(config.num_threads):
        return _run(config)


def _run(config: Toy2DConfig) -> dict:
    # 1. Output folder and random streams: training draws from `seed`, evaluation and figures from `seed + 1`.
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(config.seed + 1)
    generator = torch.Generator().manual_seed(config.seed + 1)
    start = time.perf_counter()

    # 2. Model and scheduler; Algorithm 1.
    model, scheduler = build(config)
    losses = train(
        model, scheduler, config.dataset, config.train_steps, config.batch_size, config.learning_rate,
        seed=config.seed, progress=config.progress,
    )  # fmt: skip
    trained = time.perf_counter()

    # 3. Algorithm 2, and the score against fresh data.
    generated, reverse = sample(model, scheduler, config.num_generated, generator)
    sampled = time.perf_counter()
    scores = evaluate(generated, sample_data(config.dataset, config.num_data, rng), config.num_samples)
    scored = time.perf_counter()

    # 4. Figures, num_samples points a panel: the forward process on fresh data, the reverse process as sampled.
    clean = torch.from_numpy(sample_data(config.dataset, config.num_samples, rng))
    forward = forward_snapshots(clean, scheduler, generator)
    reverse = {t: points[: config.num_samples] for t, points in reverse.items()}
    name = config.dataset
    plot_snapshots(forward, output_dir / "forward.png", f"{name}: forward process $q(x_t \\mid x_0)$, data → noise")
    plot_snapshots(
        reverse, output_dir / "reverse.png", f"{name}: reverse process $p_\\theta(x_{{t-1}} \\mid x_t)$, noise → data",
        order="descending",
    )  # fmt: skip

    # 5. metrics.json.
    tail = losses[-max(1, len(losses) // 20) :]
    metrics = {
        "dataset": config.dataset,
        "metric": (
            "energy distance (V-statistic) between num_samples generated and num_samples data points; distance and "
            "floor are its expected values, estimated from num_generated and num_data points"
        ),
        **scores,
        "final_loss": float(np.mean(tail)),  # mean of the last 5% of steps
        "seconds": {  # the only entries that change between repeats of a config
            "train": round(trained - start, 2),
            "sample": round(sampled - trained, 2),
            "score": round(scored - sampled, 2),
            "total": round(time.perf_counter() - start, 2),
        },
        "config": asdict(config),
    }
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    logger.info(
        "toy2d %s: distance %.3g, floor %.3g, ratio %.2f", config.dataset, scores["distance"], scores["floor"],
        scores["ratio"],
    )  # fmt: skip
    return metrics


def untrained_distance(config: Toy2DConfig) -> dict:
    """`evaluate` for the model as initialised, the baseline a training run must beat."""
    with _torch_threads(config.num_threads):
        model, scheduler = build(config)
        generator = torch.Generator().manual_seed(config.seed + 1)
        generated, _ = sample(model, scheduler, config.num_generated, generator)
        data = sample_data(config.dataset, config.num_data, np.random.default_rng(config.seed + 1))
        return evaluate(generated, data, config.num_samples)


__all__ = [
    "DATASETS",
    "NoisePredictor",
    "Toy2DConfig",
    "energy_distance",
    "evaluate",
    "forward_snapshots",
    "make_scheduler",
    "run",
    "sample",
    "sample_data",
    "snapshot_times",
    "train",
    "untrained_distance",
]
