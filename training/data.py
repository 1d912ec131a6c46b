"""Training data: the built-in captioned-shapes dataset, loading any image/caption dataset with `datasets`, and the
transforms and collate that feed the training loop (which tokenizes; nothing here does).

Sources (exactly one, see `TrainConfig`): `dataset_name: shapes` (generated here), a Hub dataset id, a folder written
by `datasets.save_to_disk`, or `train_data_dir`, an imagefolder whose `metadata.jsonl` lines hold `file_name` and the
caption (the diffusers convention).

Determinism: every random choice for a sample (crop offset, flip, which of several captions) comes from its own
`torch.Generator` seeded from (seed, epoch, index), see `sample_generator`. So a sample's augmentation doesn't depend on
shuffling, batch size, the number of dataloader workers or processes, or on how many batches a resumed run skipped.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from accelerate.logging import get_logger
from PIL import Image, ImageDraw, ImageOps

from .config import BUILTIN_DATASETS, IMAGE_INTERPOLATION_MODES, TrainConfig

logger = get_logger(__name__)

# ---- the built-in "shapes" dataset -----------------------------------------------------------------------------------
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
BACKGROUNDS = {"white": (245, 245, 245), "black": (20, 20, 20), "gray": (128, 128, 128)}
MIN_SHAPES_RESOLUTION = 8  # below this a small shape is a pixel or two and its kind can't be told

IMAGE_COLUMN, CAPTION_COLUMN = "image", "text"  # what `load_train_dataset` renames the chosen columns to
CAPTION_COLUMN_CANDIDATES = ("text", "caption", "captions", "prompt")
_RESAMPLING = {name: getattr(Image.Resampling, name.upper()) for name in IMAGE_INTERPOLATION_MODES}


def _extent_range(size: str, resolution: int) -> tuple[int, int]:
    """Smallest and largest whole-pixel extent whose fraction of `resolution` lies in SIZE_RANGES[size]."""
    low, high = SIZE_RANGES[size]
    return int(np.ceil(low * resolution)), int(np.floor(high * resolution))


def make_shapes_sample(index: int, resolution: int, seed: int) -> tuple[Image.Image, dict[str, str]]:
    """Sample `index` of the shapes dataset: (RGB image, {"text", "size", "color", "shape", "background"}).

    Each sample has its own generator seeded from (seed, index), so any sample can be made alone and a larger dataset
    starts with the smaller one. Attributes, extent and position are uniform over their ranges. The fill is exact,
    without antialiasing: every pixel is either the background colour or the shape colour, which keeps the palette
    exact for reading attributes back (the models blur edges anyway; 4× supersampling would add mixed-colour pixels).
    """
    rng = np.random.default_rng([seed, index])
    size = SIZES[rng.integers(len(SIZES))]
    color = list(COLORS)[rng.integers(len(COLORS))]
    shape = SHAPES[rng.integers(len(SHAPES))]
    background = list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))]
    low, high = _extent_range(size, resolution)
    extent = int(rng.integers(low, high + 1))
    x, y = (int(v) for v in rng.integers(0, resolution - extent + 1, size=2))  # top-left; shape fully inside

    image = Image.new("RGB", (resolution, resolution), BACKGROUNDS[background])
    draw = ImageDraw.Draw(image)
    right, bottom = x + extent - 1, y + extent - 1  # PIL boxes are inclusive: these give exactly `extent` pixels
    if shape == "circle":
        draw.ellipse((x, y, right, bottom), fill=COLORS[color])
    elif shape == "square":
        draw.rectangle((x, y, right, bottom), fill=COLORS[color])
    else:
        draw.polygon([(x, bottom), (right, bottom), (x + (extent - 1) / 2, y)], fill=COLORS[color])
    attributes = {"size": size, "color": color, "shape": shape, "background": background}
    return image, {"text": CAPTION_TEMPLATE.format(**attributes), **attributes}


def make_shapes_dataset(num_samples: int, resolution: int, seed: int) -> datasets.Dataset:
    """The built-in dataset: columns `image` (datasets.Image, PNG), `text` and `size`/`color`/`shape`/`background`.
    Deterministic: the same arguments give identical pixels."""
    if num_samples < 1:
        raise ValueError(f"`num_samples`: {num_samples} must be ≥ 1.")
    if resolution < MIN_SHAPES_RESOLUTION:
        raise ValueError(f"`resolution`: {resolution} must be ≥ {MIN_SHAPES_RESOLUTION} for the shapes dataset.")
    if seed < 0:
        raise ValueError(f"`seed`: {seed} must be ≥ 0.")
    columns: dict[str, list] = {"image": [], "text": [], "size": [], "color": [], "shape": [], "background": []}
    for index in range(num_samples):
        image, attributes = make_shapes_sample(index, resolution, seed)
        columns["image"].append(image)
        for key, value in attributes.items():
            columns[key].append(value)
    features = datasets.Features(
        {"image": datasets.Image(), **{key: datasets.Value("string") for key in columns if key != "image"}}
    )
    return datasets.Dataset.from_dict(columns, features=features)


def write_imagefolder(dataset: datasets.Dataset, output_dir: str | Path) -> Path:
    """Write `dataset` as an imagefolder: one PNG per row plus `metadata.jsonl` with `file_name` and every other
    column (`text`, ...). `load_dataset("imagefolder", data_dir=output_dir)` reads it back."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    dataset = dataset.cast_column("image", datasets.Image(decode=False))
    width = max(6, len(str(len(dataset) - 1)))
    with open(output_dir / "metadata.jsonl", "w") as metadata:
        for index, row in enumerate(dataset):
            file_name = f"{index:0{width}d}.png"
            image = _open_image(row.pop("image"))
            image.save(output_dir / file_name, format="PNG")
            metadata.write(json.dumps({"file_name": file_name, **row}) + "\n")
    return output_dir


# ---- loading a training dataset --------------------------------------------------------------------------------------


def load_train_dataset(config: TrainConfig) -> datasets.Dataset:
    """The training split as a `datasets.Dataset` with two columns, `image` (undecoded: {"bytes", "path"}) and `text`
    (a caption or a list of captions), checked early: columns exist, rows are present, captions are strings, and
    every image decodes (unreadable ones stop the run or are skipped, per `on_bad_image`).

    Needs an accelerate state (`Accelerator()` or `PartialState()`) for its log messages.
    """
    dataset, source = _load_source(config)
    image_column, caption_column = resolve_columns(dataset, config.image_column, config.caption_column)
    if len(dataset) == 0:
        raise ValueError(f"The dataset from {source} is empty (0 rows).")
    if config.max_train_samples is not None and config.max_train_samples < len(dataset):
        dataset = dataset.shuffle(seed=config.dataset_seed).select(range(config.max_train_samples))

    dataset = dataset.select_columns([image_column, caption_column])
    dataset = dataset.cast_column(image_column, datasets.Image(decode=False))
    if (image_column, caption_column) != (IMAGE_COLUMN, CAPTION_COLUMN):
        dataset = dataset.rename_columns({image_column: "__image", caption_column: "__text"})
        dataset = dataset.rename_columns({"__image": IMAGE_COLUMN, "__text": CAPTION_COLUMN})
    _check_captions(dataset, caption_column)
    dataset = _check_images(dataset, config.on_bad_image, source)
    logger.info(f"Training data: {len(dataset)} images from {source} (columns {image_column!r}, {caption_column!r})")
    return dataset


def _load_source(config: TrainConfig) -> tuple[datasets.Dataset, str]:
    if config.dataset_name in BUILTIN_DATASETS:
        dataset = make_shapes_dataset(config.num_shapes_samples, config.resolution, config.dataset_seed)
        return dataset, f"the built-in shapes dataset (seed {config.dataset_seed})"
    if config.dataset_name is not None:
        name = config.dataset_name
        path = Path(name).expanduser()
        saved_markers = ("dataset_info.json", "state.json", "dataset_dict.json")  # what save_to_disk writes
        if path.is_dir() and any((path / marker).is_file() for marker in saved_markers):
            return _train_split(datasets.load_from_disk(str(path)), f"`dataset_name`: {name!r}"), f"{name!r}"
        if name.startswith(("/", ".", "~")) and not path.exists():
            raise FileNotFoundError(f"`dataset_name`: {name!r} looks like a path but does not exist.")
        loaded = datasets.load_dataset(name, config.dataset_config_name, cache_dir=config.cache_dir)
        return _train_split(loaded, f"`dataset_name`: {name!r}"), f"{name!r}"
    data_dir = Path(config.train_data_dir)
    check_imagefolder(data_dir)
    loaded = datasets.load_dataset("imagefolder", data_dir=str(data_dir), cache_dir=config.cache_dir)
    return _train_split(loaded, f"`train_data_dir`: {str(data_dir)!r}"), f"{str(data_dir)!r}"


def _train_split(loaded, what: str) -> datasets.Dataset:
    if isinstance(loaded, datasets.Dataset):
        return loaded
    if "train" not in loaded:
        raise ValueError(f"{what} has no 'train' split; its splits are {', '.join(loaded)}.")
    return loaded["train"]


def check_imagefolder(data_dir: Path) -> None:
    """A clear error for the common imagefolder mistakes, before `datasets` reports them less clearly."""
    if not data_dir.is_dir():
        raise FileNotFoundError(f"`train_data_dir`: {str(data_dir)!r} is not a directory.")
    metadata_files = sorted(data_dir.rglob("metadata.jsonl"))
    if not metadata_files:
        raise FileNotFoundError(
            f"`train_data_dir`: {str(data_dir)!r} has no metadata.jsonl; it needs one line per image like "
            '{"file_name": "0001.png", "text": "a caption"} (see scripts/make_shapes_dataset.py).'
        )
    num_images = 0
    for metadata in metadata_files:
        for number, line in enumerate(metadata.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            num_images += 1
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{metadata}, line {number}: not valid JSON ({error}).") from None
            if not isinstance(row, dict) or "file_name" not in row:
                raise ValueError(f"{metadata}, line {number}: has no `file_name` key (keys: {list(row)}).")
            if not (metadata.parent / row["file_name"]).is_file():
                raise FileNotFoundError(
                    f"{metadata}, line {number}: image {row['file_name']!r} does not exist in {metadata.parent}."
                )
    if num_images == 0:
        raise ValueError(f"`train_data_dir`: {str(data_dir)!r} is empty: its metadata.jsonl lists no images.")


def resolve_columns(
    dataset: datasets.Dataset, image_column: str | None = None, caption_column: str | None = None
) -> tuple[str, str]:
    """The image and caption column names: as given (checked to exist), or detected like diffusers does."""
    columns = dataset.column_names
    available = f"available columns: {', '.join(columns)}"
    if image_column is None:
        images = [c for c in columns if isinstance(dataset.features[c], datasets.Image)]
        image_column = IMAGE_COLUMN if IMAGE_COLUMN in columns else (images[0] if images else None)
        if image_column is None:
            raise ValueError(f"No image column found (no 'image' column, none of feature type Image); set "
                             f"`image_column`. The dataset's {available}.")
    elif image_column not in columns:
        raise ValueError(f"`image_column`: {image_column!r} is not a column of the dataset; {available}.")
    if not isinstance(dataset.features[image_column], datasets.Image):
        raise ValueError(
            f"`image_column`: {image_column!r} has feature {dataset.features[image_column]}, expected datasets.Image."
        )
    if caption_column is None:
        caption_column = next((c for c in CAPTION_COLUMN_CANDIDATES if c in columns), None)
        if caption_column is None:
            raise ValueError(f"No caption column found (tried {', '.join(CAPTION_COLUMN_CANDIDATES)}); set "
                             f"`caption_column`. The dataset's {available}.")
    elif caption_column not in columns:
        raise ValueError(f"`caption_column`: {caption_column!r} is not a column of the dataset; {available}.")
    return image_column, caption_column


def _check_captions(dataset: datasets.Dataset, caption_column: str) -> None:
    for index, caption in enumerate(dataset[CAPTION_COLUMN]):
        valid = isinstance(caption, str) or (
            isinstance(caption, list) and caption and all(isinstance(c, str) for c in caption)
        )
        if not valid:
            raise ValueError(
                f"`caption_column`: {caption_column!r}, row {index}: {caption!r} is not a string or a non-empty "
                "list of strings."
            )


def _check_images(dataset: datasets.Dataset, on_bad_image: str, source: str) -> datasets.Dataset:
    """Decode every image once, so a bad file fails (or is skipped) now rather than hours into training."""
    bad: list[str] = []
    good: list[int] = []
    for index, cell in enumerate(dataset.select_columns([IMAGE_COLUMN])[IMAGE_COLUMN]):
        try:
            _open_image(cell)
        except Exception as error:  # PIL raises many types (UnidentifiedImageError, OSError, SyntaxError, ...)
            name = _image_name(cell, index)
            if on_bad_image == "stop":
                raise ValueError(
                    f"Cannot read image {name} from {source}: {error}. Fix or remove it, or set on_bad_image=skip."
                ) from error
            bad.append(name)
        else:
            good.append(index)
    if not bad:
        return dataset
    examples = ", ".join(bad[:5]) + (", ..." if len(bad) > 5 else "")
    logger.warning(f"on_bad_image=skip: skipped {len(bad)} of {len(dataset)} images that cannot be read: {examples}")
    if not good:
        raise ValueError(f"The dataset from {source} has no readable images ({len(bad)} unreadable).")
    return dataset.select(good)


def _image_name(cell: dict, index: int) -> str:
    return f"{cell['path']!r} (row {index})" if cell.get("path") else f"row {index}"


def _open_image(cell: dict) -> Image.Image:
    """An undecoded datasets.Image cell ({"bytes", "path"}) → a fully decoded RGB PIL image, upright per EXIF."""
    if cell.get("bytes") is not None:
        image = Image.open(io.BytesIO(cell["bytes"]))
    elif cell.get("path"):
        image = Image.open(cell["path"])
    else:
        raise ValueError("the image cell has neither bytes nor a path")
    image.load()
    image = ImageOps.exif_transpose(image)
    if image.mode.startswith("I;16") or image.mode == "I":
        # 16-bit grayscale (PNG, TIFF): PIL's convert("RGB") clips at 255, which would make it almost all white.
        image = Image.fromarray((np.asarray(image, dtype=np.float64) / 257).clip(0, 255).round().astype(np.uint8))
    return image.convert("RGB")


def all_captions(dataset: datasets.Dataset) -> list[str]:
    """Every caption of a loaded dataset, lists flattened (e.g. to train a tokenizer on)."""
    captions = []
    for caption in dataset[CAPTION_COLUMN]:
        captions.extend([caption] if isinstance(caption, str) else caption)
    return captions


# ---- transforms, the torch dataset and collate -----------------------------------------------------------------------


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """The generator for one sample's random choices, from (seed, epoch, index) mixed by numpy's SeedSequence (so
    nearby seeds/indices give unrelated streams)."""
    state = np.random.SeedSequence([seed, epoch, index]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def preprocess_image(
    image: Image.Image,
    resolution: int,
    center_crop: bool = False,
    random_flip: bool = False,
    interpolation: str = "lanczos",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """diffusers' training transform, without torchvision: resize the shorter side to `resolution`, crop a square
    (center, or random), maybe flip horizontally, → float32 (3, R, R) in [-1, 1].

    Random draws, in this order and only when used: crop top, crop left, flip. They come from `generator` (torch's
    global generator if None).
    """
    image = image.convert("RGB")
    width, height = image.size
    # 1. Resize so the shorter side is `resolution` (torchvision.transforms.Resize(int) rounding).
    if width <= height:
        new_size = (resolution, int(resolution * height / width))
    else:
        new_size = (int(resolution * width / height), resolution)
    image = image.resize(new_size, resample=_RESAMPLING[interpolation])
    # 2. Crop to resolution × resolution.
    width, height = image.size
    if center_crop:
        top, left = int(round((height - resolution) / 2.0)), int(round((width - resolution) / 2.0))
    else:
        top = int(torch.randint(0, height - resolution + 1, (1,), generator=generator))
        left = int(torch.randint(0, width - resolution + 1, (1,), generator=generator))
    image = image.crop((left, top, left + resolution, top + resolution))
    # 3. Horizontal flip with probability 1/2.
    if random_flip and torch.rand(1, generator=generator).item() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    # 4. uint8 HWC → float CHW in [-1, 1] (ToTensor then Normalize([0.5], [0.5])).
    array = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())
    return array.permute(2, 0, 1).float().div(127.5).sub(1.0)


def pick_caption(caption: str | Sequence[str], generator: torch.Generator | None = None) -> str:
    """A caption cell holding several captions: a random one when a generator is given (training), else the first."""
    if isinstance(caption, str):
        return caption
    if generator is None:
        return caption[0]
    return caption[int(torch.randint(0, len(caption), (1,), generator=generator))]


class ImageCaptionDataset(torch.utils.data.Dataset):
    """A loaded dataset (from `load_train_dataset`) as torch samples {"pixel_values", "caption"}.

    Sample `index` in epoch `epoch` draws its crop, flip and caption choice from `sample_generator(seed, epoch,
    index)`. Call `set_epoch` before iterating each epoch (with `persistent_workers=False`, the default, workers copy
    the dataset when iteration starts, so they see the new epoch). `train=False` takes the first of several captions.
    """

    def __init__(
        self,
        dataset: datasets.Dataset,
        resolution: int,
        center_crop: bool = False,
        random_flip: bool = False,
        interpolation: str = "lanczos",
        seed: int = 0,
        train: bool = True,
    ):
        if interpolation not in _RESAMPLING:
            raise ValueError(f"`interpolation`: {interpolation!r} is not one of {', '.join(_RESAMPLING)}.")
        self.dataset = dataset
        self.resolution = resolution
        self.center_crop = center_crop
        self.random_flip = random_flip
        self.interpolation = interpolation
        self.seed = seed
        self.train = train
        self.epoch = 0

    @classmethod
    def from_config(cls, dataset: datasets.Dataset, config: TrainConfig, train: bool = True) -> ImageCaptionDataset:
        return cls(dataset, config.resolution, config.center_crop, config.random_flip,
                   config.image_interpolation_mode, config.seed, train)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.dataset[index]
        generator = sample_generator(self.seed, self.epoch, index)
        try:
            image = _open_image(row[IMAGE_COLUMN])
        except Exception as error:
            # Every image decoded when training started (`_check_images`), so this one changed since. Skipping it now
            # would change the batches, so whatever `on_bad_image` says, stop; the last checkpoint is untouched.
            raise ValueError(
                f"Cannot read image {_image_name(row[IMAGE_COLUMN], index)}: {error}. It could be read when training "
                f"started, so it changed on disk since; restore it and resume with resume_from_checkpoint=latest."
            ) from error
        pixel_values = preprocess_image(
            image, self.resolution, self.center_crop, self.random_flip, self.interpolation, generator
        )
        caption = pick_caption(row[CAPTION_COLUMN], generator if self.train else None)
        return {"pixel_values": pixel_values, "caption": caption}


def collate_fn(examples: list[dict[str, Any]]) -> dict[str, Any]:
    """Batch → {"pixel_values": float32 (B, 3, R, R), "captions": list[str]}; the training loop tokenizes."""
    pixel_values = torch.stack([example["pixel_values"] for example in examples])
    return {
        "pixel_values": pixel_values.to(memory_format=torch.contiguous_format).float(),
        "captions": [example["caption"] for example in examples],
    }
