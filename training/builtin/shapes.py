"""The built-in "shapes" dataset (`dataset_name: shapes`): captioned synthetic shapes drawn here, so that the whole
job runs with nothing downloaded and prompt adherence can be measured exactly (training/judges/shapes.py reads the
caption's attributes back off the pixels).

Caption grammar: "a {size} {color} {shape} on a {background} background", 2 sizes x 6 colours x 3 shapes x 3
backgrounds = 108 captions.

Behind options, values the base grammar does not have, to teach a trained model a concept it never saw (docs/lora.md):
colours (`NEW_COLORS`: orange; `colors=("orange",)` draws every sample in them) and backgrounds (`NEW_BACKGROUNDS`:
yellow, a base shape colour; `backgrounds=("white", "black", "gray", "yellow")` mixes it among the base three). A
shape is never drawn in its background's colour. Without the options the dataset is the base grammar's, byte for
byte the same as before the options existed.
"""

from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np
from PIL import Image, ImageDraw

# Caption grammar, exported so an evaluator can read the attributes back off generated pixels.
CAPTION_TEMPLATE = "a {size} {color} {shape} on a {background} background"
SIZES = ("small", "large")
# Side (square), diameter (circle) or base = height (triangle) as a fraction of the image width; the shape's bounding
# box of pixels is exactly that extent, rounded to whole pixels inside the range.
SIZE_RANGES = {"small": (0.25, 0.40), "large": (0.55, 0.75)}
COLORS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "purple": (150, 60, 200),
    "cyan": (40, 200, 210),
}
SHAPES = ("circle", "square", "triangle")  # square axis-aligned; triangle isosceles, apex up
# Outside the base grammar, for adapters to learn (training `shapes_colors`). Orange sits between red and yellow but
# 103 and 91 RGB units from them (the base palette's closest pair, blue and purple, is 114 apart) and ≥ 177 from
# every background, so the judge can tell it from its neighbours as it tells the base colours apart.
NEW_COLORS = {"orange": (250, 130, 0)}
ALL_COLORS = {**COLORS, **NEW_COLORS}
BACKGROUNDS = {"white": (245, 245, 245), "black": (20, 20, 20), "gray": (128, 128, 128)}
# A background outside the base grammar (training `shapes_backgrounds`): yellow, a colour the base model's decoder has
# drawn (as shapes up to 3/4 of the image wide), where it could not draw orange (docs/lora.md). It is ≥ 170 RGB units
# from every other shape colour and 137 from gray, so the reader tells it from the base backgrounds and a shape from it.
NEW_BACKGROUNDS = {"yellow": COLORS["yellow"]}
ALL_BACKGROUNDS = {**BACKGROUNDS, **NEW_BACKGROUNDS}
MIN_SHAPES_RESOLUTION = 8  # below this a small shape is a pixel or two and its kind can't be told


def _extent_range(size: str, resolution: int) -> tuple[int, int]:
    """Smallest and largest whole-pixel extent whose fraction of `resolution` lies in SIZE_RANGES[size]."""
    low, high = SIZE_RANGES[size]
    return int(np.ceil(low * resolution)), int(np.floor(high * resolution))


def _check_names(values, known: dict, base: dict, key: str, base_label: str) -> tuple[str, ...]:
    """`values` as a tuple of distinct names of `known` (the base grammar's `base` and the new ones); None → `base`."""
    if values is None:
        return tuple(base)
    values = tuple(values)
    unknown = [v for v in values if v not in known]
    if not values or unknown or len(set(values)) != len(values):
        new = ", ".join(name for name in known if name not in base)
        raise ValueError(f"`{key}`: {list(values)!r} must be distinct names from {', '.join(known)} (the base "
                         f"{base_label} and {new}).")
    return values


def check_colors(colors, key: str = "colors") -> tuple[str, ...]:
    """The colour names `colors` as a tuple, each one of ALL_COLORS, without repeats; None → the base six."""
    return _check_names(colors, ALL_COLORS, COLORS, key, "six")


def check_backgrounds(backgrounds, colors=None, key: str = "backgrounds") -> tuple[str, ...]:
    """The background names `backgrounds` as a tuple, each one of ALL_BACKGROUNDS, without repeats, and each leaving
    at least one of `colors` (check_colors) to draw on it; None → the base three."""
    backgrounds = _check_names(backgrounds, ALL_BACKGROUNDS, BACKGROUNDS, key, "three")
    names = check_colors(colors)
    for background in backgrounds:
        if set(names) <= {background}:
            raise ValueError(f"`{key}`: {background!r} is the only shape colour {list(names)!r}; a shape is never "
                             "drawn in its background's colour, so give another colour or background.")
    return backgrounds


def make_shapes_sample(
    index: int, resolution: int, seed: int, colors: tuple[str, ...] | None = None,
    backgrounds: tuple[str, ...] | None = None,
) -> tuple[Image.Image, dict[str, str]]:
    """Sample `index` of the shapes dataset: (RGB image, {"text", "size", "color", "shape", "background"}).

    Each sample has its own generator seeded from (seed, index), so any sample can be made alone and a larger dataset
    starts with the smaller one. Attributes, extent and position are uniform over their ranges. The fill is exact,
    without antialiasing: every pixel is either the background colour or the shape colour, which keeps the palette
    exact for reading attributes back (the models blur edges anyway; 4× supersampling would add mixed-colour pixels).
    `colors`: the colours to draw from (names of ALL_COLORS; None → the base six, the dataset as it always was);
    `backgrounds` the same for ALL_BACKGROUNDS (None → the base three). A shape that came out in its background's
    colour is drawn again from the other colours (a draw the base grammar never makes, so its samples stay the same).
    """
    names = check_colors(colors)
    background_names = check_backgrounds(backgrounds, names)
    rng = np.random.default_rng([seed, index])
    size = SIZES[rng.integers(len(SIZES))]
    color = names[rng.integers(len(names))]
    shape = SHAPES[rng.integers(len(SHAPES))]
    background = background_names[rng.integers(len(background_names))]
    if color == background:
        others = [name for name in names if name != background]
        color = others[rng.integers(len(others))]
    low, high = _extent_range(size, resolution)
    extent = int(rng.integers(low, high + 1))
    x, y = (int(v) for v in rng.integers(0, resolution - extent + 1, size=2))  # top-left; shape fully inside

    image = Image.new("RGB", (resolution, resolution), ALL_BACKGROUNDS[background])
    draw = ImageDraw.Draw(image)
    right, bottom = x + extent - 1, y + extent - 1  # PIL boxes are inclusive: these give exactly `extent` pixels
    if shape == "circle":
        draw.ellipse((x, y, right, bottom), fill=ALL_COLORS[color])
    elif shape == "square":
        draw.rectangle((x, y, right, bottom), fill=ALL_COLORS[color])
    else:
        draw.polygon([(x, bottom), (right, bottom), (x + (extent - 1) / 2, y)], fill=ALL_COLORS[color])
    attributes = {"size": size, "color": color, "shape": shape, "background": background}
    return image, {"text": CAPTION_TEMPLATE.format(**attributes), **attributes}


def _check_arguments(num_samples: int, resolution: int, seed: int, colors=None, backgrounds=None) -> tuple[str, ...]:
    if num_samples < 1:
        raise ValueError(f"`num_samples`: {num_samples} must be ≥ 1.")
    if resolution < MIN_SHAPES_RESOLUTION:
        raise ValueError(f"`resolution`: {resolution} must be ≥ {MIN_SHAPES_RESOLUTION} for the shapes dataset.")
    if seed < 0:
        raise ValueError(f"`seed`: {seed} must be ≥ 0.")
    check_backgrounds(backgrounds, colors)
    return check_colors(colors)


def make_shapes_dataset(
    num_samples: int, resolution: int, seed: int, colors: tuple[str, ...] | None = None,
    backgrounds: tuple[str, ...] | None = None,
) -> datasets.Dataset:
    """The built-in dataset: columns `image` (datasets.Image, PNG), `text` and `size`/`color`/`shape`/`background`.
    Deterministic: the same arguments give identical pixels. `colors`, `backgrounds`: as for `make_shapes_sample`."""
    colors = _check_arguments(num_samples, resolution, seed, colors, backgrounds)
    columns: dict[str, list] = {"image": [], "text": [], "size": [], "color": [], "shape": [], "background": []}
    for index in range(num_samples):
        image, attributes = make_shapes_sample(index, resolution, seed, colors, backgrounds)
        columns["image"].append(image)
        for key, value in attributes.items():
            columns[key].append(value)
    features = datasets.Features(
        {"image": datasets.Image(), **{key: datasets.Value("string") for key in columns if key != "image"}}
    )
    return datasets.Dataset.from_dict(columns, features=features)


def shapes_dataset_dir(
    cache_dir: str | Path, num_samples: int, resolution: int, seed: int, colors: tuple[str, ...] | None = None,
    backgrounds: tuple[str, ...] | None = None,
) -> Path:
    """`make_shapes_dataset(num_samples, resolution, seed, colors, backgrounds)` saved once (`datasets.save_to_disk`) into
    `cache_dir`, and found there on later calls: the ranks of a run and both of its stages load the same Arrow files instead of
    each drawing and PNG-encoding thousands of images again."""
    from .cache import BUILD_RECORD, build_record_json, cached_build

    checked = _check_arguments(num_samples, resolution, seed, colors, backgrounds)  # before anything is written
    colors = None if colors is None else checked
    backgrounds = None if backgrounds is None else tuple(backgrounds)
    record = {"dataset": "shapes", "format_version": 1, "num_samples": num_samples, "resolution": resolution,
              "seed": seed}  # fmt: skip
    if colors is not None:  # the base grammar's record (and so its cached folder) stays what it always was
        record["colors"] = list(colors)
    if backgrounds is not None:
        record["backgrounds"] = list(backgrounds)

    def build(folder: Path) -> None:
        make_shapes_dataset(num_samples, resolution, seed, colors, backgrounds).save_to_disk(str(folder / "data"))
        (folder / BUILD_RECORD).write_text(build_record_json(record), encoding="utf-8")

    return cached_build(cache_dir, f"shapes-{resolution}px", record, build) / "data"
