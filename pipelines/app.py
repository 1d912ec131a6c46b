"""A browser demo of a saved model: text to image, image to image and inpainting in a Gradio app.

    python app.py [MODEL] [--port 7860] [--host 127.0.0.1] [--share]     (in a saved folder: MODEL is the folder)
    python scripts/demo.py MODEL [--lora PATH]                             (in a sculpt checkout)

MODEL is a folder sculpt saved, a Hub id, or a Stable Diffusion 1.x/2.x-format folder; it is loaded with
`DiffusionPipeline.from_pretrained(MODEL, trust_remote_code=True)` (sculpt's folders carry their pipeline and
scheduler code). The three tasks are three pipelines over the same components: sculpt's LatentDiffusion*Pipelines
for sculpt's folders, diffusers' StableDiffusion*Pipelines for Stable Diffusion ones.

The generation logic is plain functions (`text_to_image`, `image_to_image`, `inpaint`) that take the pipelines,
the settings, a progress callable and a stop event, and raise `ValueError` for bad values; `build_demo` wraps them in
a `gr.Blocks` page, where a ValueError becomes a message in the page (`gr.Error`), the pipeline's
`callback_on_step_end` drives `gr.Progress`, one generation runs at a time (the others queue), and "Stop" ends the
running one after its current step (`pipe._interrupt`, which diffusers' pipelines and ours honour).

`save_pretrained` ships this file as `app.py` in every folder it writes, with the pipeline modules it imports
inlined (pipelines/portable.py, `save_app`), so that it runs with torch, diffusers, transformers and gradio alone,
and a folder pushed to a Hugging Face Space (`sdk: gradio`) is a working demo.
"""

from __future__ import annotations

import argparse
import inspect
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import PIL.Image
import PIL.ImageChops
import torch
from diffusers import (
    DiffusionPipeline,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
)

from .pipeline_latent_diffusion import LatentDiffusionPipeline
from .pipeline_latent_diffusion_img2img import LatentDiffusionImg2ImgPipeline
from .pipeline_latent_diffusion_inpaint import LatentDiffusionInpaintPipeline
from .schedulers import DIFFUSERS_SCHEDULERS, SCHEDULER_TABLE, make_scheduler

# Scheduler choices: key → (label, class, extra config). "model" is the scheduler the folder was saved with.
# The menu: the model's own scheduler, then diffusers' (pipelines/schedulers.py; ours ships as "the model's own").
DEMO_SCHEDULERS: dict[str, str] = {"model": "the model's own",
                                   **{name: SCHEDULER_TABLE[name][0] for name in DIFFUSERS_SCHEDULERS}}  # fmt: skip
MAX_IMAGES = 8  # per request: each image is a batch row through the UNet
ProgressFn = Callable[..., Any]  # gr.Progress's signature: progress((done, total), desc=..., unit=...)


class DemoPipelines(NamedTuple):
    """The three task pipelines of one model (they share its components), the scheduler it was saved with (each
    request sets its own on the pipeline it runs) and its name for the page title."""

    text_to_image: DiffusionPipeline
    image_to_image: DiffusionPipeline
    inpaint: DiffusionPipeline
    scheduler: Any
    name: str


class Generation(NamedTuple):
    """What one request made: the images, a line saying how, and whether "Stop" ended it early."""

    images: list[PIL.Image.Image]
    info: str
    stopped: bool


# ---------------------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------------------
def load_pipelines(
    model: str | Path | DiffusionPipeline, allow_pickle: bool = False, device: str = "cpu"
) -> DemoPipelines:
    """The task pipelines of `model` on `device`: a loaded pipeline, or a folder / Hub id for
    `DiffusionPipeline.from_pretrained` with `trust_remote_code=True` (weights from safetensors only unless
    `allow_pickle`: pickles can run code). Seeds draw on the CPU whatever the device, as `torch.Generator()` does."""
    if isinstance(model, DiffusionPipeline):
        pipe, name = model, type(model).__name__
    else:
        name = Path(str(model)).name if Path(str(model)).expanduser().exists() else str(model)
        pipe = DiffusionPipeline.from_pretrained(
            str(model), trust_remote_code=True, use_safetensors=None if allow_pickle else True
        )
    pipe.to(device)
    components = pipe.components
    if type(pipe).__name__.startswith("LatentDiffusion"):  # sculpt's, loaded as remote code or installed
        classes = (LatentDiffusionPipeline, LatentDiffusionImg2ImgPipeline, LatentDiffusionInpaintPipeline)
        tasks = [cls(**{k: components[k] for k in inspect.signature(cls.__init__).parameters if k != "self"})
                 for cls in classes]
    elif isinstance(pipe, (StableDiffusionPipeline, StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline)):
        tasks = [cls.from_pipe(pipe) for cls in
                 (StableDiffusionPipeline, StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline)]
    else:
        raise ValueError(
            f"`model`: {name!r} is a {type(pipe).__name__}; the demo runs sculpt's LatentDiffusionPipeline folders and "
            "Stable Diffusion 1.x/2.x-format ones (StableDiffusionPipeline)."
        )
    for task in tasks:
        task.set_progress_bar_config(disable=True)  # the page shows the progress
    return DemoPipelines(*tasks, scheduler=pipe.scheduler, name=name)


def apply_lora(pipelines: DemoPipelines, path: str, scale: float = 1.0) -> None:
    """Load LoRA weights into the shared UNet / text encoder (so all three tasks use them), fused at `scale`.
    Raises ValueError when the pipeline has no LoRA loader."""
    pipe = pipelines.text_to_image
    if not hasattr(pipe, "load_lora_weights"):
        raise ValueError(
            f"`lora`: {type(pipe).__name__} has no `load_lora_weights`, so it cannot load {path!r}; use a pipeline "
            "with diffusers' LoRA loader (StableDiffusionPipeline, or a sculpt version whose pipelines have one)."
        )
    pipe.load_lora_weights(path)
    if scale != 1.0:
        pipe.fuse_lora(lora_scale=scale)


def call_default(pipe: DiffusionPipeline, name: str) -> Any:
    """The default of `pipe.__call__`'s argument `name`: the page starts from what the pipeline itself uses."""
    return inspect.signature(pipe.__call__).parameters[name].default


def default_size(pipe: DiffusionPipeline) -> tuple[int, int]:
    """(height, width) in pixels the model was trained at: the UNet's sample size times the VAE factor."""
    if hasattr(pipe, "default_height_width"):  # sculpt's pipelines
        return pipe.default_height_width()
    size = pipe.unet.config.sample_size
    height, width = (size, size) if isinstance(size, int) else size
    return height * pipe.vae_scale_factor, width * pipe.vae_scale_factor


def request_scheduler(pipelines: DemoPipelines, key: str):
    """A fresh scheduler for one request (schedulers keep state between `set_timesteps` and `step`), built from the
    model's own scheduler config."""
    if key not in DEMO_SCHEDULERS:
        raise ValueError(f"`scheduler`: {key!r} is not one of {list(DEMO_SCHEDULERS)}.")
    own = pipelines.scheduler
    return type(own).from_config(own.config) if key == "model" else make_scheduler(key, own.config)


# ---------------------------------------------------------------------------------------------------------------------
# Generation: plain functions, the page calls them and so can tests
# ---------------------------------------------------------------------------------------------------------------------
def _whole(name: str, value: Any, minimum: int, maximum: int | None = None) -> int:
    """`value` of the field `name` as an int in [minimum, maximum]; gradio's number fields send floats."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise ValueError(f"{name}: {value!r} must be a whole number.")
    if value < minimum or (maximum is not None and value > maximum):
        accepted = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum}"
        raise ValueError(f"{name}: {int(value)} must be {accepted}.")
    return int(value)


def _size(value: Any) -> Any:
    # Empty → the model's size; any other value goes to the pipeline, which says which multiples it accepts.
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _generate(
    pipe: DiffusionPipeline,
    pipelines: DemoPipelines,
    prompt: str,
    negative_prompt: str,
    guidance_scale: float,
    steps: Any,
    scheduler: str,
    seed: Any,
    width: Any,
    height: Any,
    num_images: Any,
    progress: ProgressFn | None,
    stop: threading.Event | None,
    **task_kwargs,
) -> Generation:
    """One call of `pipe`, image i seeded with `seed + i` (as scripts/sample.py: one image reproduces alone)."""
    steps = _whole("Steps (num_inference_steps)", steps, 1)
    num_images = _whole("Number of images", num_images, 1, MAX_IMAGES)
    seed = int(torch.randint(0, 2**31 - 1, ()).item()) if seed is None else _whole("Seed", seed, 0)
    done = [0, 0]  # steps done, steps in the run (img2img runs strength * steps of them)

    def on_step_end(pipeline, step: int, timestep, callback_kwargs: dict) -> dict:
        done[:] = [step + 1, pipeline.num_timesteps]
        if progress is not None:
            progress((step + 1, pipeline.num_timesteps), desc=f"step {step + 1} of {pipeline.num_timesteps}",
                     unit="steps")  # fmt: skip
        if stop is not None and stop.is_set():
            pipeline._interrupt = True  # the denoising loop skips the remaining steps, then decodes
        return {}

    pipe.scheduler = request_scheduler(pipelines, scheduler)
    started = time.perf_counter()
    images = pipe(
        prompt=prompt,
        negative_prompt=negative_prompt or None,
        guidance_scale=guidance_scale,
        num_inference_steps=steps,
        height=_size(height),
        width=_size(width),
        num_images_per_prompt=num_images,
        generator=[torch.Generator().manual_seed(seed + i) for i in range(num_images)],
        callback_on_step_end=on_step_end,
        **task_kwargs,
    ).images
    seconds = time.perf_counter() - started
    seeds = f"seed {seed}" if num_images == 1 else f"seeds {seed}–{seed + num_images - 1}"
    scheduler_name = type(pipe.scheduler).__name__
    if getattr(pipe, "interrupt", False):
        info = (f"Stopped after step {done[0]} of {done[1]} ({scheduler_name}, {seeds}): the images are only partly "
                "denoised.")  # fmt: skip
        return Generation(images, info, stopped=True)
    plural = "s" if len(images) > 1 else ""
    info = f"{len(images)} image{plural}, {done[1]} steps of {scheduler_name}, {seeds}, {seconds:.1f} s"
    return Generation(images, info, stopped=False)


def text_to_image(
    pipelines: DemoPipelines, prompt: str, negative_prompt: str = "", guidance_scale: float = 7.5, steps: Any = 50,
    scheduler: str = "model", seed: Any = 0, width: Any = None, height: Any = None, num_images: Any = 1,
    progress: ProgressFn | None = None, stop: threading.Event | None = None,
) -> Generation:  # fmt: skip
    """Images from `prompt`. `seed` None draws one (and `info` says which); width/height None: the model's size."""
    return _generate(pipelines.text_to_image, pipelines, prompt, negative_prompt, guidance_scale, steps, scheduler,
                     seed, width, height, num_images, progress, stop)  # fmt: skip


def image_to_image(
    pipelines: DemoPipelines, image: PIL.Image.Image | None, strength: float, prompt: str, negative_prompt: str = "",
    guidance_scale: float = 7.5, steps: Any = 50, scheduler: str = "model", seed: Any = 0, width: Any = None,
    height: Any = None, num_images: Any = 1, progress: ProgressFn | None = None, stop: threading.Event | None = None,
) -> Generation:  # fmt: skip
    """`image` re-generated toward `prompt` (SDEdit); `strength` in (0, 1] is how much of the schedule is re-run.
    The image is resized to width x height (default: its own size, rounded down to the VAE's factor)."""
    if image is None:
        raise ValueError("Image: upload the image to start from.")
    return _generate(pipelines.image_to_image, pipelines, prompt, negative_prompt, guidance_scale, steps, scheduler,
                     seed, width, height, num_images, progress, stop, image=image.convert("RGB"),
                     strength=strength)  # fmt: skip


def inpaint(
    pipelines: DemoPipelines, image: PIL.Image.Image | None, mask: PIL.Image.Image | None, strength: float,
    prompt: str, negative_prompt: str = "", guidance_scale: float = 7.5, steps: Any = 50, scheduler: str = "model",
    seed: Any = 0, width: Any = None, height: Any = None, num_images: Any = 1, progress: ProgressFn | None = None,
    stop: threading.Event | None = None,
) -> Generation:  # fmt: skip
    """The white part of `mask` (the size of `image`; white = repaint, black = keep) repainted following `prompt`."""
    if image is None:
        raise ValueError("Image: upload the image to inpaint, then paint over the part to repaint.")
    if mask is None or mask.convert("L").getbbox() is None:
        raise ValueError("Mask: nothing is painted; paint over the part of the image to repaint.")
    return _generate(pipelines.inpaint, pipelines, prompt, negative_prompt, guidance_scale, steps, scheduler, seed,
                     width, height, num_images, progress, stop, image=image.convert("RGB"),
                     mask_image=mask.convert("L"), strength=strength)  # fmt: skip


def editor_image_and_mask(value: dict | None) -> tuple[PIL.Image.Image | None, PIL.Image.Image | None]:
    """`gr.ImageEditor`'s value ({"background", "layers", "composite"}, PIL images) as (image, mask): the background
    flattened on white, and white wherever any layer is painted (its alpha is not 0), whatever the brush colour."""
    if not value or value.get("background") is None:
        return None, None
    background = value["background"].convert("RGBA")
    image = PIL.Image.alpha_composite(PIL.Image.new("RGBA", background.size, "white"), background).convert("RGB")
    mask = PIL.Image.new("L", image.size, 0)
    for layer in value.get("layers") or []:
        painted = layer.convert("RGBA").getchannel("A").point(lambda alpha: 255 if alpha else 0)
        if painted.size != image.size:
            painted = painted.resize(image.size, PIL.Image.NEAREST)
        mask = PIL.ImageChops.lighter(mask, painted)
    return image, mask


# ---------------------------------------------------------------------------------------------------------------------
# The page
# ---------------------------------------------------------------------------------------------------------------------
def _import_gradio():
    try:
        import gradio
    except ImportError as error:
        raise ImportError(
            "The demo needs gradio: pip install gradio (in a sculpt checkout: pip install -e '.[demo]')."
        ) from error
    return gradio


def build_demo(model: str | Path | DiffusionPipeline | DemoPipelines, allow_pickle: bool = False,
               title: str | None = None, device: str = "cpu") -> Any:  # fmt: skip
    """The Gradio page (a `gr.Blocks`, queued) for `model`: a folder, a Hub id, a loaded pipeline, or
    `load_pipelines`' result. Endpoints: /text_to_image, /image_to_image, /inpaint (all return the gallery and a line
    of info), /stop. `demo.launch(server_name="127.0.0.1", server_port=...)` serves it."""
    gr = _import_gradio()
    pipelines = model if isinstance(model, DemoPipelines) else load_pipelines(model, allow_pickle, device)
    t2i = pipelines.text_to_image
    height, width = default_size(t2i)
    factor = t2i.vae_scale_factor
    running: dict[str, threading.Event] = {}  # session → the stop event of its generation in progress

    def run(fn: Callable[..., Generation], request: Any, progress: ProgressFn, *args) -> tuple[list, str]:
        stop = running[request.session_hash] = threading.Event()
        try:
            result = fn(pipelines, *args, progress=progress, stop=stop)
        except ValueError as error:  # bad values: a message in the page, not a trace
            raise gr.Error(str(error)) from None
        finally:
            running.pop(request.session_hash, None)
        if result.stopped:
            gr.Warning(result.info)
        return result.images, result.info

    # gradio finds gr.Request by the parameter's type hint; with postponed annotations it cannot resolve "gr.Request"
    # in this module (gradio is imported here, not at the top), so the hint is set to the class itself.
    def takes_request(fn: Callable) -> Callable:
        fn.__annotations__ = {**fn.__annotations__, "request": gr.Request}
        return fn

    @takes_request
    def on_text_to_image(prompt, negative_prompt, guidance, steps, scheduler, seed, width, height, num_images,
                         request=None, progress=gr.Progress()):  # noqa: B008 - gradio's idiom  # fmt: skip
        return run(text_to_image, request, progress, prompt, negative_prompt, guidance, steps, scheduler, seed,
                   width, height, num_images)  # fmt: skip

    @takes_request
    def on_image_to_image(image, strength, prompt, negative_prompt, guidance, steps, scheduler, seed, width, height,
                          num_images, request=None, progress=gr.Progress()):  # noqa: B008 - gradio's idiom  # fmt: skip
        return run(image_to_image, request, progress, image, strength, prompt, negative_prompt, guidance, steps,
                   scheduler, seed, width, height, num_images)  # fmt: skip

    @takes_request
    def on_inpaint(editor, strength, prompt, negative_prompt, guidance, steps, scheduler, seed, width, height,
                   num_images, request=None, progress=gr.Progress()):  # noqa: B008 - gradio's idiom  # fmt: skip
        image, mask = editor_image_and_mask(editor)
        return run(inpaint, request, progress, image, mask, strength, prompt, negative_prompt, guidance, steps,
                   scheduler, seed, width, height, num_images)  # fmt: skip

    @takes_request
    def on_stop(request=None) -> str:
        stop = running.get(request.session_hash)
        if stop is None:
            return "Nothing is running."
        stop.set()
        return "Stopping after the current step..."

    own_scheduler = type(pipelines.scheduler).__name__
    scheduler_choices = [(f"{label} ({own_scheduler})" if key == "model" else label, key)
                         for key, label in DEMO_SCHEDULERS.items()]  # fmt: skip
    title = title or pipelines.name
    with gr.Blocks(title=title) as demo:
        gr.Markdown(f"# {title}\nText to image, image to image and inpainting with `{type(t2i).__name__}`.")
        with gr.Row():
            with gr.Column():
                prompt = gr.Textbox(label="Prompt", lines=2, elem_id="prompt")
                negative_prompt = gr.Textbox(label="Negative prompt", placeholder="(none)")
                with gr.Tab("Text to image"):
                    generate = gr.Button("Generate", variant="primary", elem_id="generate")
                with gr.Tab("Image to image"):
                    init_image = gr.Image(label="Image", type="pil", image_mode="RGB", sources=["upload", "clipboard"])
                    i2i_strength = gr.Slider(0, 1, value=call_default(pipelines.image_to_image, "strength"),
                                             step=0.05, label="Strength (how much of the image is re-generated)")
                    generate_i2i = gr.Button("Generate from the image", variant="primary")
                with gr.Tab("Inpaint"):
                    editor = gr.ImageEditor(
                        label="Image; paint over what to repaint", type="pil", image_mode="RGBA", format="png",
                        sources=["upload", "clipboard"], layers=False, transforms=(),
                        brush=gr.Brush(colors=["#ff00ff"], color_mode="fixed"),
                    )  # fmt: skip
                    inpaint_strength = gr.Slider(0, 1, value=call_default(pipelines.inpaint, "strength"), step=0.05,
                                                 label="Strength (1: repaint from noise)")  # fmt: skip
                    generate_inpaint = gr.Button("Inpaint", variant="primary")
                with gr.Accordion("Settings", open=True):
                    with gr.Row():
                        guidance = gr.Slider(0, 20, value=call_default(t2i, "guidance_scale"), step=0.5,
                                             label="Guidance scale (<= 1: off)")  # fmt: skip
                        steps = gr.Number(value=call_default(t2i, "num_inference_steps"), precision=0, label="Steps")
                    with gr.Row():
                        scheduler = gr.Dropdown(scheduler_choices, value="model", label="Scheduler")
                        seed = gr.Number(value=0, precision=0, label="Seed (empty: random)")
                    with gr.Row():
                        width_box = gr.Number(value=width, precision=0, label=f"Width (a multiple of {factor})")
                        height_box = gr.Number(value=height, precision=0, label=f"Height (a multiple of {factor})")
                        num_images = gr.Slider(1, MAX_IMAGES, value=1, step=1, label="Images")
            with gr.Column():
                # PNG: lossless, the pipeline's pixels (gradio's default is WebP). 3 columns keep a grid of 8 in view.
                gallery = gr.Gallery(label="Images", format="png", columns=3, object_fit="contain", elem_id="gallery")
                info = gr.Markdown(elem_id="info")
                stop = gr.Button("Stop", variant="stop", elem_id="stop")

        settings = [prompt, negative_prompt, guidance, steps, scheduler, seed, width_box, height_box, num_images]
        # One generation at a time across the three tasks (they share the UNet); the others wait in the queue.
        queued = {"outputs": [gallery, info], "concurrency_id": "generate", "concurrency_limit": 1}
        events = [
            generate.click(on_text_to_image, settings, api_name="text_to_image", **queued),
            generate_i2i.click(on_image_to_image, [init_image, i2i_strength, *settings], api_name="image_to_image",
                               **queued),
            generate_inpaint.click(on_inpaint, [editor, inpaint_strength, *settings], api_name="inpaint", **queued),
        ]
        # Not queued, so it runs while a generation holds the queue. The running generation stops after its step
        # (cancelling would leave it running: gradio cannot cancel a function that has started); `cancels` drops
        # this session's generations that are still waiting in the queue.
        stop.click(on_stop, None, info, api_name="stop", queue=False, cancels=events)
    return demo.queue()


def main(argv: list[str] | None = None) -> None:
    """`python app.py [MODEL] [--port P] [--host H] [--share]`; MODEL defaults to the folder holding this file."""
    parser = argparse.ArgumentParser(description="A browser demo of a text-to-image model.")
    here = Path(__file__).resolve().parent
    parser.add_argument("model", nargs="?", default=str(here), help="a saved folder or a Hub id (default: %(default)s)")
    parser.add_argument("--port", type=int, default=None, help="default: $GRADIO_SERVER_PORT or 7860")
    parser.add_argument("--host", default=None, help="default: $GRADIO_SERVER_NAME or 127.0.0.1")
    parser.add_argument("--share", action="store_true", help="also serve it on a public gradio.live link")
    parser.add_argument("--allow_pickle", action="store_true", help="also load pickled weights: only if you trust them")
    parser.add_argument("--device", default=None, help="default: cuda when there is a GPU, else cpu")
    args = parser.parse_args(argv)
    folder = Path(args.model).expanduser()
    if folder.is_dir() and not (folder / "model_index.json").is_file():
        parser.error(f"MODEL: {args.model} has no model_index.json; pass a saved pipeline folder or a Hub id.")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    demo = build_demo(args.model, allow_pickle=args.allow_pickle, device=device)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share)


if __name__ == "__main__":
    main()
