"""What the img2img and inpainting pipelines accept as `image` and `mask_image`, checked before any model runs.

diffusers' convention (`PipelineImageInput`): a PIL image, a numpy array (HWC, or NHWC for a batch), a torch tensor
(CHW, or NCHW), or a list of one of these kinds. `describe_images` reads an input the way diffusers'
`VaeImageProcessor.preprocess` will, and returns how many images it holds and their size, or raises a `ValueError`
for what the processor would fail on (a list mixing kinds), miscount (a list of batches counted as one image each)
or silently change (a list of images of different sizes, all resized to the first one's size).

Masks go through the processor with `do_convert_grayscale=True`, which reads a lone 3-dimensional tensor as
(N, H, W) and a lone 3-dimensional array as (N, H, W) unless its last axis is 1 (H, W, 1); inside a list, each
array or tensor is one mask, (H, W), (H, W, 1) or (1, H, W).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import PIL.Image
import torch
from diffusers.image_processor import PipelineImageInput

# The kinds an image may come as, with the names error messages use for them.
IMAGE_KINDS = {PIL.Image.Image: "PIL image", np.ndarray: "numpy array", torch.Tensor: "tensor"}


class ImagesInfo(NamedTuple):
    """What an `image` / `mask_image` argument holds: `count` images of `size` (height, width)."""

    count: int
    size: tuple[int, int]


def _accepted(mask: bool) -> str:
    if mask:
        return "a PIL image, a numpy array or a tensor in [0, 1] (1 = repaint, 0 = keep), or a list of one of these"
    return "a PIL image, a numpy array in [0, 1], a tensor in [-1, 1], or a list of one of these kinds"


def _layout(item: PIL.Image.Image | np.ndarray | torch.Tensor, mask: bool, in_list: bool) -> tuple[int, int, int, int]:
    """(count, height, width, channels) of one PIL image, array or tensor as the image processor reads it; channels
    is 0 for a PIL image (converted to RGB, or to grayscale for a mask). Unsupported ranks are returned as count -1."""
    if isinstance(item, PIL.Image.Image):
        return 1, item.height, item.width, 0
    shape = tuple(item.shape)
    if len(shape) == 2:  # one grayscale image
        return 1, shape[0], shape[1], 1
    if len(shape) == 4:
        if isinstance(item, np.ndarray):  # NHWC
            return shape[0], shape[1], shape[2], shape[3]
        return shape[0], shape[2], shape[3], shape[1]  # NCHW
    if len(shape) == 3:
        lone_mask_batch = mask and not in_list and not (isinstance(item, np.ndarray) and shape[-1] == 1)
        if lone_mask_batch:  # (N, H, W)
            return shape[0], shape[1], shape[2], 1
        if isinstance(item, np.ndarray):  # HWC
            return 1, shape[0], shape[1], shape[2]
        return 1, shape[1], shape[2], shape[0]  # CHW
    return -1, 0, 0, 0


def describe_images(image: PipelineImageInput | None, name: str, channels: int, mask: bool = False) -> ImagesInfo:
    """Check `image` (the argument called `name`) and return how many images it holds and their (height, width).

    `channels` is what an array or tensor must have (the VAE's input channels; 1 for masks); PIL images are
    converted. Raises `ValueError` naming the argument, what it got and what is accepted.
    """
    items = image if isinstance(image, list) else [image]
    kinds = [next((k for k in IMAGE_KINDS if isinstance(item, k)), None) for item in items]
    if not items or None in kinds:
        got = type(image).__name__
        if isinstance(image, list):
            got = f"a list of {[type(item).__name__ for item in items]}" if items else "an empty list"
        raise ValueError(f"`{name}`: got {got}; pass {_accepted(mask)}.")
    if len(set(kinds)) > 1:
        mixed = sorted({IMAGE_KINDS[kind] + "s" for kind in kinds})
        raise ValueError(
            f"`{name}`: a list mixing {' and '.join(mixed)}; pass a list of one kind (PIL images, numpy arrays or "
            f"tensors), as diffusers' image processor takes them."
        )
    in_list = isinstance(image, list)
    layouts = [_layout(item, mask, in_list) for item in items]
    for item, (count, _, _, _) in zip(items, layouts):
        if count < 0:
            layout = "HWC or NHWC" if isinstance(item, np.ndarray) else "CHW or NCHW"
            raise ValueError(f"`{name}`: shape {tuple(item.shape)} has {item.ndim} dimensions; pass {layout}.")
    if in_list and len({getattr(item, "ndim", 0) for item in items}) > 1:
        raise ValueError(
            f"`{name}`: a list of arrays or tensors with {sorted({item.ndim for item in items})} dimensions; pass "
            f"single images, or batches, not both (or concatenate them into one batch)."
        )
    for item, (_, _, _, item_channels) in zip(items, layouts):
        if item_channels and item_channels != channels:
            layout = "(N)CHW" if isinstance(item, torch.Tensor) else "(N)HWC"
            what = "a single-channel mask" if mask else "the VAE's input"
            plural = "s" if channels != 1 else ""
            raise ValueError(
                f"`{name}`: shape {tuple(item.shape)} is not {layout} with {channels} channel{plural}, {what}."
            )
    sizes = [(height, width) for _, height, width, _ in layouts]
    if len(set(sizes)) > 1:
        raise ValueError(
            f"`{name}`: the list holds images of sizes {sorted(set(sizes))} (height, width); they would all be "
            f"resized to {sizes[0]}, the first one's. Pass images of one size (resize them first)."
        )
    return ImagesInfo(count=sum(count for count, _, _, _ in layouts), size=sizes[0])


def is_tensor_input(image: PipelineImageInput) -> bool:
    """A tensor or a list of tensors (taken as already in the VAE's [-1, 1])."""
    return isinstance(image, torch.Tensor) or (isinstance(image, list) and isinstance(image[0], torch.Tensor))
