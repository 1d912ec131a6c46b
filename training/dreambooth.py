"""DreamBooth's prior preservation (Ruiz et al. 2023, "DreamBooth: Fine Tuning Text-to-Image Diffusion Models for
Subject-Driven Generation", arXiv 2208.12242, Sec. 3.3), as diffusers' train_dreambooth(_lora).py does it: before
training the base model draws `num_class_images` images of the class (`class_prompts`), and every batch pairs each
training image with one of them; the class images' loss, weighted by `prior_loss_weight`, keeps the model drawing
the class as it did (L = L_instance + λ L_prior, Eq. 2; training/loss.py).

    class_images(config, accelerator)   the class images as a dataset, drawing the missing ones first
    PriorBatchSampler                   batches of B training images followed by B class images

The class images are an imagefolder (PNGs + metadata.jsonl with each image's prompt) in `class_data_dir`; images
already there are kept and counted, so a resumed or repeated run reuses them. Image i is drawn from the generator
seeded by (seed, i), so the same config draws the same images. Without `class_prompts` the folder must already hold
`num_class_images` captioned images, real ones (kohya's "regularisation images"): they are used as they are.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from accelerate.logging import get_logger
from tqdm.auto import tqdm

logger = get_logger(__name__)

METADATA = "metadata.jsonl"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def class_data_dir(config) -> Path:
    return Path(config.class_data_dir) if config.class_data_dir else Path(config.output_dir) / "class_images"


def _existing(folder: Path) -> list[dict]:
    """The class images already in `folder`, as metadata rows {"file_name", "text"} in file-name order. Images
    without a metadata line (a folder the user filled) get no text here; `class_images` gives them the prompts."""
    rows = {}
    if (folder / METADATA).is_file():
        for line in (folder / METADATA).read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                rows[row["file_name"]] = row
    files = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
    return [rows.get(name, {"file_name": name}) for name in files]


def class_row(config, index: int) -> dict:
    """Class image `index`'s metadata row: its file and its prompt, `class_prompts[index % len]`."""
    return {"file_name": f"class-{index:06d}.png", "text": config.class_prompts[index % len(config.class_prompts)]}


@torch.no_grad()
def draw_class_images(config, folder: Path, start: int, count: int, progress: bool, process_index: int = 0,
                      num_processes: int = 1) -> None:  # fmt: skip
    """Draw class images start..start+count-1 with the base model (its parts as training loads them) into `folder`,
    named and prompted by `class_row`. The batches of 16 are dealt round-robin to `num_processes` processes, this one
    drawing those of `process_index`; image i comes from the generator seeded (seed, i) in the same batch whatever
    the number of processes, so the images are the same."""
    from pipelines import LatentDiffusionPipeline

    from .data import seeded_generator
    from .models import load_noise_scheduler, load_text_encoder, load_tokenizer, load_unet, load_vae

    tokenizer = load_tokenizer(config)
    pipe = LatentDiffusionPipeline(vae=load_vae(config), text_encoder=load_text_encoder(config, tokenizer),
                                   tokenizer=tokenizer, unet=load_unet(config),
                                   scheduler=load_noise_scheduler(config))  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    height, width = pipe.default_height_width()
    folder.mkdir(parents=True, exist_ok=True)
    batch = 16
    mine = list(range(start, start + count, batch))[process_index::num_processes]
    for first in tqdm(mine, desc="class images", disable=not progress):
        rows = [class_row(config, i) for i in range(first, min(first + batch, start + count))]
        images = pipe([row["text"] for row in rows], num_inference_steps=config.class_num_inference_steps,
                      guidance_scale=config.class_guidance_scale, height=height, width=width,
                      generator=[seeded_generator(config.seed, first + k) for k in range(len(rows))]).images  # fmt: skip
        for row, image in zip(rows, images):
            image.save(folder / row["file_name"])


def images_per_batch(config) -> int:
    """Images in one process's micro-batch: `train_batch_size`, and as many class images with prior preservation."""
    return config.train_batch_size * (2 if config.with_prior_preservation else 1)


def check_class_images(config) -> None:
    """Without `class_prompts` nothing can be drawn: `class_data_dir` must hold `num_class_images` images, each with
    its caption in metadata.jsonl. Raises ValueError / FileNotFoundError naming what is missing, before training."""
    if not config.with_prior_preservation or config.class_prompts:
        return
    folder = class_data_dir(config)
    if not folder.is_dir():
        raise FileNotFoundError(f"`class_data_dir`: {str(folder)!r} is not a folder; without `class_prompts` it must "
                                f"hold the {config.num_class_images} class images (`num_class_images`).")  # fmt: skip
    rows = _existing(folder)[: config.num_class_images]
    if len(rows) < config.num_class_images:
        raise ValueError(f"`class_data_dir`: {str(folder)!r} holds {len(rows)} images ({', '.join(IMAGE_SUFFIXES)}), "
                         f"fewer than `num_class_images`: {config.num_class_images}; add images, lower "
                         "num_class_images, or give `class_prompts` for the base model to draw the rest.")  # fmt: skip
    uncaptioned = [row["file_name"] for row in rows if not row.get("text")]
    if uncaptioned:
        raise ValueError(f"`class_data_dir`: {str(folder)!r} has no caption for {len(uncaptioned)} of its images "
                         f"(e.g. {uncaptioned[0]!r}); give each a line {{\"file_name\": ..., \"text\": ...}} in "
                         f"{METADATA}, or `class_prompts`.")  # fmt: skip


def class_images(config, accelerator):
    """The first `num_class_images` class images of `class_data_dir` as a dataset with `image` and `text` columns
    (as `data.load_train_dataset` returns), drawing the missing ones with the base model first (every process its
    share, as diffusers' DreamBooth scripts do; the main process writes the metadata)."""
    import datasets

    folder = class_data_dir(config)
    rows = _existing(folder)
    accelerator.wait_for_everyone()  # every process counted the same images before any is drawn
    missing = config.num_class_images - len(rows)
    if missing > 0:
        logger.info(f"Drawing {missing} class images with the base model into {folder}", main_process_only=True)
        draw_class_images(config, folder, len(rows), missing, accelerator.is_local_main_process,
                          accelerator.process_index, accelerator.num_processes)  # fmt: skip
        rows += [class_row(config, i) for i in range(len(rows), config.num_class_images)]
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:  # a folder of the user's own, complete, is only read
            with open(folder / METADATA, "w") as metadata:
                for row in rows:
                    metadata.write(json.dumps(row) + "\n")
        accelerator.wait_for_everyone()
    rows = _existing(folder)[: config.num_class_images]
    texts = [row.get("text") or class_row(config, i)["text"] for i, row in enumerate(rows)]
    features = datasets.Features({"image": datasets.Image(decode=False), "text": datasets.Value("string")})
    return datasets.Dataset.from_dict({"image": [str(folder / row["file_name"]) for row in rows], "text": texts},
                                      features=features)  # fmt: skip


class PriorBatchSampler(torch.utils.data.Sampler):
    """DreamBooth's batches over a dataset whose first `num_instance` rows are the training images and the rest the
    class images: `batch_size` training images, then `batch_size` class images (the loss tells them apart by index).
    An epoch has max(training, class) // batch_size batches, in the order of `sampler`'s permutation (a
    `data.EpochSampler`, which accelerate's `set_epoch` reaches as `.sampler`), the smaller set cycled, as diffusers'
    DreamBoothDataset pairs index i with instance[i % n] and class[i % m].

    `batch_size` and `drop_last` are what accelerate's `BatchSamplerShard` reads when it deals the batches to the
    processes of a multi-process run: the length of a batch as yielded (2 × `batch_size`) and true, so each process
    gets whole batches and the same number of them. (With the per-set size there, accelerate waited for batches of
    that length, yielded none in the loop, and gave a process an empty batch at the end.)"""

    def __init__(self, sampler, num_instance: int, batch_size: int):
        self.sampler, self.num_instance, self.per_set = sampler, num_instance, batch_size
        self.batch_size, self.drop_last = 2 * batch_size, True
        self.num_class = len(sampler) - num_instance
        if num_instance < 1 or self.num_class < 1:
            raise ValueError(f"`with_prior_preservation`: needs training and class images; got {num_instance} and "
                             f"{self.num_class}.")  # fmt: skip
        if len(self) == 0:
            raise ValueError(f"`train_batch_size`: {batch_size} is larger than both the {num_instance} training and "
                             f"the {self.num_class} class images; lower it or add images.")  # fmt: skip

    def __len__(self) -> int:
        return max(self.num_instance, self.num_class) // self.per_set

    def __iter__(self):
        order = list(self.sampler)
        instance = [i for i in order if i < self.num_instance]
        prior = [i for i in order if i >= self.num_instance]
        for batch in range(len(self)):
            positions = range(batch * self.per_set, (batch + 1) * self.per_set)
            yield [instance[p % len(instance)] for p in positions] + [prior[p % len(prior)] for p in positions]


def prior_mask(indices, num_instance: int | None) -> torch.Tensor | None:
    """Which examples of a batch are class images (their dataset index is past the training images); None without
    prior preservation."""
    if num_instance is None:
        return None
    return torch.tensor([index >= num_instance for index in indices])
