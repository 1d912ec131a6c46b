"""training/builtin/shapes.py: the built-in shapes dataset is deterministic, follows its caption grammar, is
balanced, and its geometry and palette read back exactly off the pixels; `dataset_name: shapes` loads it."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import pytest
from conftest import SHAPES_CAPTION, data_config, image_bytes

from training.builtin.shapes import (
    BACKGROUNDS,
    COLORS,
    SHAPES,
    SIZE_RANGES,
    SIZES,
    make_shapes_dataset,
)
from training.data import load_train_dataset

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("partial_state")



# ---- the shapes dataset ------------------------------------------------------------------------------------------


def test_shapes_are_deterministic():
    a, b = make_shapes_dataset(24, 32, seed=0), make_shapes_dataset(24, 32, seed=0)
    assert image_bytes(a) == image_bytes(b) and a["text"] == b["text"]
    c = make_shapes_dataset(24, 32, seed=1)
    assert image_bytes(c) != image_bytes(a)
    # Per-sample seeding: a larger dataset starts with the smaller one.
    assert image_bytes(make_shapes_dataset(30, 32, seed=0))[:24] == image_bytes(a)


def test_shapes_columns_and_caption_grammar():
    dataset = make_shapes_dataset(400, 16, seed=3)
    assert dataset.column_names == ["image", "text", "size", "color", "shape", "background"]
    assert isinstance(dataset.features["image"], datasets.Image)
    for row in dataset.select_columns(["text", "size", "color", "shape", "background"]):
        match = SHAPES_CAPTION.match(row["text"])
        assert match, row["text"]
        assert match.groups() == (row["size"], row["color"], row["shape"], row["background"])


def test_shapes_attributes_are_balanced():
    dataset = make_shapes_dataset(1800, 8, seed=0)
    for column, values in [("size", SIZES), ("color", COLORS), ("shape", SHAPES), ("background", BACKGROUNDS)]:
        counts = Counter(dataset[column])
        expected = len(dataset) / len(values)
        assert set(counts) == set(values)
        assert all(abs(n - expected) < 0.2 * expected for n in counts.values()), (column, counts)


@pytest.mark.parametrize("resolution", [32, 45, 64])
def test_shapes_geometry_and_palette_read_back_from_pixels(resolution):
    dataset = make_shapes_dataset(120, resolution, seed=resolution)
    fill = {"square": [], "circle": [], "triangle": []}
    for row in dataset:
        pixels = np.asarray(row["image"])
        assert pixels.shape == (resolution, resolution, 3) and pixels.dtype == np.uint8
        background = np.array(BACKGROUNDS[row["background"]], dtype=np.uint8)
        color = np.array(COLORS[row["color"]], dtype=np.uint8)
        is_background = (pixels == background).all(-1)
        is_shape = (pixels == color).all(-1)
        assert (is_background | is_shape).all(), "exact fill: only the two palette colours appear"
        ys, xs = np.nonzero(is_shape)
        width, height = xs.max() - xs.min() + 1, ys.max() - ys.min() + 1
        assert width == height, "a shape's bounding box is square, so none is clipped by the border"
        low, high = SIZE_RANGES[row["size"]]
        assert low <= width / resolution <= high, (row["text"], width, resolution)
        fill[row["shape"]].append(is_shape.sum() / (width * height))
    assert min(fill["square"]) == 1.0
    assert 0.70 < np.mean(fill["circle"]) < 0.85  # π/4 ≈ 0.785
    assert 0.45 < np.mean(fill["triangle"]) < 0.65  # 1/2, plus the pixels on the edges


def test_shapes_reject_bad_arguments():
    with pytest.raises(ValueError, match=r"`num_samples`: 0 must be ≥ 1"):
        make_shapes_dataset(0, 32, 0)
    with pytest.raises(ValueError, match=r"`resolution`: 4 must be ≥ 8"):
        make_shapes_dataset(4, 4, 0)
    with pytest.raises(ValueError, match=r"`seed`: -1 must be ≥ 0"):
        make_shapes_dataset(4, 32, -1)


def test_load_builtin_shapes(tmp_path):
    config = data_config(tmp_path, "num_shapes_samples=20", "dataset_seed=5")
    dataset = load_train_dataset(config)
    assert dataset.column_names == ["image", "text"] and len(dataset) == 20
    assert dataset["text"] == make_shapes_dataset(20, 32, seed=5)["text"]
    subset = load_train_dataset(data_config(tmp_path, "num_shapes_samples=20", "max_train_samples=7"))
    assert len(subset) == 7
    assert subset["text"] == load_train_dataset(data_config(tmp_path, "num_shapes_samples=20",
                                                            "max_train_samples=7"))["text"]


# ---- colours outside the base grammar (`colors`, for adapters to learn) ----------------------------------------------
def _digest(dataset) -> str:
    import hashlib

    import numpy as np

    pixels = b"".join(np.asarray(image).tobytes() for image in dataset["image"])
    return hashlib.sha256(pixels + "".join(dataset["text"]).encode()).hexdigest()


def test_without_the_option_the_dataset_is_byte_for_byte_the_one_before_it():
    """The digest was recorded with main's shapes.py (14ad376), before `colors` existed: the base model's data stays
    as it was. `colors=None` and the base six named explicitly are that dataset too."""
    from training.builtin.shapes import COLORS

    before = "b986560723c8ccc2262e750cd0961fd147840d1cb19c41f6266bef98ab139db2"
    assert _digest(make_shapes_dataset(300, 32, 0)) == before
    assert _digest(make_shapes_dataset(300, 32, 0, tuple(COLORS))) == before


def test_new_colors_draw_every_shape_in_them_and_keep_the_rest_of_the_grammar():
    import numpy as np

    from training.builtin.shapes import ALL_COLORS

    orange = make_shapes_dataset(60, 32, 0, ("orange",))
    assert set(orange["color"]) == {"orange"}
    assert set(orange["shape"]) == set(SHAPES) and set(orange["background"]) == set(BACKGROUNDS)
    assert set(orange["text"]) <= {f"a {s} orange {h} on a {b} background" for s in SIZES for h in SHAPES
                                   for b in BACKGROUNDS}  # fmt: skip
    for image, background in zip(orange["image"], orange["background"]):
        colours = {tuple(c) for c in np.asarray(image).reshape(-1, 3)}
        assert colours <= {ALL_COLORS["orange"], BACKGROUNDS[background]} and len(colours) == 2
    for bad in (("pink",), ("orange", "orange"), ()):
        with pytest.raises(ValueError, match=r"^`colors`: .* must be distinct names from red, green, .*, orange"):
            make_shapes_dataset(4, 32, 0, bad)


# ---- backgrounds outside the base grammar (`backgrounds`, for adapters to learn) -------------------------------------
def test_the_base_dataset_is_unchanged_with_the_base_backgrounds_named():
    from training.builtin.shapes import BACKGROUNDS

    before = "b986560723c8ccc2262e750cd0961fd147840d1cb19c41f6266bef98ab139db2"  # as above: before either option
    assert _digest(make_shapes_dataset(300, 32, 0, None, tuple(BACKGROUNDS))) == before


def test_a_new_background_is_drawn_and_a_shape_never_in_its_background_colour():
    import numpy as np

    from training.builtin.shapes import ALL_BACKGROUNDS, ALL_COLORS, COLORS

    mixed = make_shapes_dataset(400, 32, 0, None, ("white", "black", "gray", "yellow"))
    assert set(mixed["background"]) == {"white", "black", "gray", "yellow"}
    on_yellow = [i for i, b in enumerate(mixed["background"]) if b == "yellow"]
    assert 70 <= len(on_yellow) <= 130  # ~1 in 4
    assert {mixed["color"][i] for i in on_yellow} == set(COLORS) - {"yellow"}  # every other colour, never yellow
    for index in on_yellow[:40]:
        image, color = mixed["image"][index], mixed["color"][index]
        assert mixed["text"][index].endswith("on a yellow background")
        colours = {tuple(c) for c in np.asarray(image).reshape(-1, 3)}
        assert colours == {ALL_COLORS[color], ALL_BACKGROUNDS["yellow"]}
    # The same arguments give the same pixels, and a sample alone is the dataset's.
    assert _digest(make_shapes_dataset(40, 32, 0, None, ("yellow",))) == _digest(
        make_shapes_dataset(40, 32, 0, None, ("yellow",)))


@pytest.mark.parametrize("colors, backgrounds, match", [
    (None, ("pink",), r"^`backgrounds`: \['pink'\] must be distinct names from white, black, gray, yellow"),
    (None, ("gray", "gray"), r"^`backgrounds`: .* must be distinct names"),
    (None, (), r"^`backgrounds`: \[\] must be distinct names"),
    (("yellow",), ("yellow",), r"^`backgrounds`: 'yellow' is the only shape colour \['yellow'\]"),
])  # fmt: skip
def test_bad_backgrounds_are_named(tmp_path, colors, backgrounds, match):
    from training.builtin.shapes import shapes_dataset_dir

    with pytest.raises(ValueError, match=match):
        make_shapes_dataset(4, 32, 0, colors, backgrounds)
    with pytest.raises(ValueError, match=match):
        shapes_dataset_dir(tmp_path / "cache", 4, 32, 0, colors, backgrounds)
    assert not (tmp_path / "cache").exists()  # nothing written
