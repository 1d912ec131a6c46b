"""pipelines/utils.py: the one image grid (the sampling script's grids and filmstrips, training's captioned sample and
validation grids through training/reporting.py)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipelines.utils import make_grid
from training.reporting import save_image_grid


def squares(n: int, side: int = 8) -> list[Image.Image]:
    return [Image.new("RGB", (side, side), (30 * i, 200, 10)) for i in range(n)]


def test_layouts_and_padding():
    assert make_grid(squares(5)).size == (3 * 8 + 2 * 2, 2 * 8 + 1 * 2)  # ⌈√5⌉ = 3 columns
    assert make_grid(squares(6), rows=1, padding=0).size == (48, 8)  # a filmstrip
    assert make_grid(squares(6), columns=2, padding=0).size == (16, 24)
    grid = np.asarray(make_grid(squares(2), padding=3))
    assert (grid[:, 8:11] == 255).all() and (grid[:, :8] == (0, 200, 10)).all()


def test_captions_and_upscaling():
    grid = make_grid(squares(2), padding=0, captions=["one", "two"], min_side=128)
    assert grid.size == (2 * 128, 128 + 36)  # 8 px upscaled ×16, three caption lines of 12 px
    pixels = np.asarray(grid)
    assert (pixels[:128, 128:256] == (30, 200, 10)).all()  # nearest upscale keeps the colour
    assert (pixels[128:, :128] < 128).any()  # a caption was drawn under the first image


def test_save_image_grid_writes_what_it_returns(tmp_path):
    grid = save_image_grid(squares(4, 32), tmp_path / "a" / "grid.png", captions=list("abcd"))
    assert np.array_equal(np.asarray(Image.open(tmp_path / "a" / "grid.png")), np.asarray(grid))
    assert grid.size == (2 * 128, 2 * (128 + 36))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"images": []}, r"`images`: got an empty list"),
        ({"images": squares(1) + squares(1, 4)}, r"`images`: sizes .* differ"),
        ({"images": squares(2), "rows": 1, "columns": 2}, r"`rows`: 1 and `columns`: 2 both given"),
        ({"images": squares(2), "rows": 0}, r"`rows`: 0 must be >= 1"),
        ({"images": squares(2), "columns": 0}, r"`columns`: 0 must be >= 1"),
        ({"images": squares(2), "captions": ["x"]}, r"`captions`: 1 captions for 2 images"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_grid(**kwargs)
