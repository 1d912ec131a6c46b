"""What a training run shows a person: labelled image grids and the loss curve."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from pipelines.utils import make_grid


def save_image_grid(
    images: list[Image.Image], path: str | Path, captions: list[str] | None = None, columns: int | None = None
) -> Image.Image:
    """Tile `images` in a grid (with each caption under its image when given), save it as PNG and return it.
    Small images are upscaled (nearest) to at least 128 px so a 32 px sample stays legible."""
    grid = make_grid(images, columns=columns, padding=0, captions=captions, min_side=128)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return grid


def plot_loss(history: list[dict], path: str | Path, title: str = "training loss") -> None:
    """Loss per step (light) and its running mean over ~2% of the run (dark), log-scaled, saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    losses = [h["loss"] for h in history]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if steps:
        ax.plot(steps, losses, color="tab:blue", alpha=0.3, linewidth=0.8, label="per step")
        window = max(1, len(losses) // 50)
        smooth = [sum(losses[max(0, i - window + 1) : i + 1]) / len(losses[max(0, i - window + 1) : i + 1])
                  for i in range(len(losses))]
        ax.plot(steps, smooth, color="tab:blue", linewidth=1.8, label=f"mean of {window}")
        if min(losses) > 0:
            ax.set_yscale("log")
        ax.legend()
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
