"""Aspect-ratio bucketing (NovelAI's, as kohya sd-scripts and SimpleTuner do it; diffusers#7908): train on images of
mixed sizes without squashing them or cropping them to a square.

    buckets        sizes (width, height) of about `resolution`² pixels, both sides divisible by `multiple` (the VAE
                   factor × the UNet's downsampling, so latents tile the UNet exactly), aspect ratios from 1:4 to 4:1;
                   or the user's list (`bucket_sizes`)
    assignment     each image to the bucket whose aspect ratio is closest (in log ratio); it is then resized to cover
                   that bucket and cropped on one axis only, by no more than the two ratios differ (an image more
                   extreme than 1:4, say 1:7, loses the ends of its long side: 43% of it at 1:7)
    batches        every batch comes from one bucket. A global step's N·B images (N processes, B per process) are
                   one bucket's, so N processes see exactly what one process with batch N·B sees. Each epoch takes
                   every image once, but for the last N·B-short remainder of each bucket: it is left out of that
                   epoch, counted and logged, and a different remainder is left out each epoch since the buckets
                   are reshuffled
    order          from the epoch's permutation of the whole dataset (`data.EpochSampler`, seeded by (seed, epoch)):
                   each bucket takes its images in that order, and the global batches run in the order of their
                   first image. A resumed run skips batches of that same order.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import torch
from accelerate.logging import get_logger

logger = get_logger(__name__)

MAX_ASPECT = 4.0  # generated buckets span 1:4 to 4:1; more extreme images are cropped to the end bucket
_SIZE = re.compile(r"^\s*(\d+)\s*[xX×]\s*(\d+)\s*$")


def parse_size(text: str, key: str) -> tuple[int, int]:
    """"WIDTHxHEIGHT" → (width, height); a ValueError naming `key` otherwise."""
    match = _SIZE.match(text)
    if not match or not all(int(v) > 0 for v in match.groups()):
        raise ValueError(f"`{key}`: {text!r} is not a size; write WIDTHxHEIGHT with positive integers, e.g. 64x32.")
    return int(match.group(1)), int(match.group(2))


def make_buckets(resolution: int, multiple: int, max_aspect: float = MAX_ASPECT) -> list[tuple[int, int]]:
    """The square `resolution`² bucket and, for each height below it in steps of `multiple`, the widest width (a
    multiple of `multiple`) that keeps the area within `resolution`², while the ratio stays within `max_aspect`;
    then the same sizes turned portrait. Sorted by aspect ratio (width / height)."""
    if resolution % multiple:
        raise ValueError(f"`resolution`: {resolution} must be divisible by {multiple} (VAE factor × UNet downsampling) "
                         "for aspect-ratio buckets.")  # fmt: skip
    landscape = []
    for height in range(resolution, multiple - 1, -multiple):
        width = (resolution * resolution // height) // multiple * multiple
        if width / height > max_aspect:
            break
        landscape.append((width, height))
    sizes = set(landscape) | {(h, w) for w, h in landscape}
    return sorted(sizes, key=lambda size: size[0] / size[1])


def check_buckets(buckets: Sequence[tuple[int, int]], multiple: int, key: str = "bucket_sizes") -> None:
    """Every side divisible by `multiple`, no bucket twice."""
    for width, height in buckets:
        if width % multiple or height % multiple:
            raise ValueError(
                f"`{key}`: {width}x{height} has a side not divisible by {multiple} (the VAE's downsampling factor "
                f"× the UNet's); the latents would not tile the UNet. Use multiples of {multiple}."
            )
    repeated = sorted({size for size in buckets if list(buckets).count(size) > 1})
    if repeated:
        raise ValueError(f"`{key}`: {', '.join(f'{w}x{h}' for w, h in repeated)} given more than once.")


def nearest_bucket(size: tuple[int, int], buckets: Sequence[tuple[int, int]]) -> int:
    """The index of the bucket whose aspect ratio is closest to `size`'s, in log ratio (so 1:2 and 2:1 are as far
    from 1:1); a tie goes to the larger bucket."""
    ratio = math.log(size[0] / size[1])
    return min(range(len(buckets)), key=lambda i: (abs(math.log(buckets[i][0] / buckets[i][1]) - ratio),
                                                   -buckets[i][0] * buckets[i][1]))  # fmt: skip


def assign_buckets(
    sizes: Sequence[tuple[int, int]],
    buckets: Sequence[tuple[int, int]],
    global_batch: int,
    names: Sequence[str],
    explicit: bool,
) -> list[int]:
    """The bucket of each image (`sizes` are (width, height), `names` say which image for errors). Refuses up front:
    an image with fewer pixels than the smallest bucket (it would be upscaled past its own detail), and an explicit
    bucket that no image falls in. A bucket holding fewer images than one global batch could never fill a step, so
    its images move to the nearest bucket that can (logged)."""
    smallest = min(buckets, key=lambda b: b[0] * b[1])
    small = [(name, size) for name, size in zip(names, sizes) if size[0] * size[1] < smallest[0] * smallest[1]]
    if small:
        listed = ", ".join(f"{name} ({w}x{h})" for name, (w, h) in small[:5]) + (", ..." if len(small) > 5 else "")
        raise ValueError(
            f"{len(small)} image(s) have fewer pixels than the smallest bucket, {smallest[0]}x{smallest[1]}: "
            f"{listed}. Remove them, or lower `resolution` (or the `bucket_sizes`)."
        )
    assigned = [nearest_bucket(size, buckets) for size in sizes]
    counts = [assigned.count(i) for i in range(len(buckets))]
    if explicit:
        empty = [f"{w}x{h}" for (w, h), n in zip(buckets, counts) if n == 0]
        if empty:
            raise ValueError(f"`bucket_sizes`: no image is closest in aspect ratio to {', '.join(empty)}; remove "
                             "those buckets.")  # fmt: skip
    full = [i for i, n in enumerate(counts) if n >= global_batch]
    if not full:
        raise ValueError(
            f"`train_batch_size`: no bucket holds a whole global batch of {global_batch} images (per process × "
            f"processes; buckets hold {max(counts)} at most); lower the batch size or use fewer buckets."
        )
    moved = {i: full[nearest_bucket(buckets[i], [buckets[j] for j in full])] for i, n in enumerate(counts)
             if 0 < n < global_batch}  # fmt: skip
    for source, target in moved.items():
        (sw, sh), (tw, th) = buckets[source], buckets[target]
        logger.info(f"bucketing: the {counts[source]} image(s) of bucket {sw}x{sh} (fewer than a global batch of "
                    f"{global_batch}) go to {tw}x{th}", main_process_only=True)  # fmt: skip
    return [moved.get(bucket, bucket) for bucket in assigned]


class BucketBatchSampler(torch.utils.data.Sampler):
    """Batches of `batch_size` indices, each from one bucket; see the module docstring for the order. With `shuffle`
    (training), a global batch is `batch_size × num_processes` images of one bucket, split into `num_processes`
    consecutive per-process batches (accelerate hands process r every N-th batch, starting at the r-th), and a
    bucket's remainder short of a global batch is left out of the epoch. Without (the caches and measurements),
    every image once, in dataset order, a bucket's last batch short. `sampler` is the `data.EpochSampler` whose
    permutation orders an epoch: accelerate's `set_epoch` reaches it as a batch sampler's `.sampler`."""

    def __init__(self, sampler, bucket_of: Sequence[int], batch_size: int, num_processes: int = 1,
                 shuffle: bool = True):  # fmt: skip
        self.sampler, self.bucket_of, self.batch_size = sampler, list(bucket_of), batch_size
        self.num_processes, self.shuffle, self.drop_last = num_processes, shuffle, shuffle
        self.global_batch = batch_size * num_processes if shuffle else batch_size

    def _global_batches(self) -> list[list[int]]:
        order = list(self.sampler)  # the epoch's permutation (dataset order without shuffling)
        members: dict[int, list[int]] = {}
        for index in order:
            members.setdefault(self.bucket_of[index], []).append(index)
        batches = []
        for indices in members.values():
            stop = len(indices) - len(indices) % self.global_batch if self.shuffle else len(indices)
            batches += [indices[start : start + self.global_batch] for start in range(0, stop, self.global_batch)]
        position = {index: rank for rank, index in enumerate(order)}
        return sorted(batches, key=lambda batch: position[batch[0]])

    def __iter__(self):
        for batch in self._global_batches():
            for start in range(0, len(batch), self.batch_size):
                yield batch[start : start + self.batch_size]

    def __len__(self) -> int:
        counts: dict[int, int] = {}
        for bucket in self.bucket_of:
            counts[bucket] = counts.get(bucket, 0) + 1
        if self.shuffle:
            return sum(n // self.global_batch for n in counts.values()) * self.num_processes
        return sum(math.ceil(n / self.batch_size) for n in counts.values())

    def left_out_per_epoch(self) -> int:
        """How many images each training epoch leaves out (the buckets' remainders short of a global batch)."""
        if not self.shuffle:
            return 0
        return sum(self.bucket_of.count(b) % self.global_batch for b in set(self.bucket_of))
