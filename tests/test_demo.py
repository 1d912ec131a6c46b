"""The browser demo (pipelines/app.py, scripts/demo.py, the app.py every saved folder carries): served for real on a
loopback port and called through `gradio_client` the way a page or a script calls it, then in a real headless browser.

Images are compared exactly (uint8 pixels, as the page shows them): the app runs the same pipeline code on the same
weights and seeds as the reference. Gradio's output files are PNG (lossless), so nothing changes on the way.
"""

from __future__ import annotations

import ast
import contextlib
import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import NO_SCULPT, TORCH_PROBE, make_components
from diffusers import PNDMScheduler, StableDiffusionImg2ImgPipeline, StableDiffusionPipeline

from pipelines import (
    LatentDiffusionImg2ImgPipeline,
    LatentDiffusionInpaintPipeline,
    LatentDiffusionPipeline,
)
from pipelines.portable import SHIPPED_CODE_MARKER

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from the app under test
gradio = pytest.importorskip("gradio", reason="the demo needs gradio: pip install -e '.[demo]'")
gradio_client = pytest.importorskip("gradio_client", reason="pip install -e '.[demo]'")
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from pipelines import app

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "demo.py"
PROMPT = "a small red circle on a white background"
STEPS = 3
ARTIFACTS = ROOT / "outputs" / "test-artifacts"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
INSTALL_BROWSER = "apt-get install -y chromium chromium-driver && pip install selenium"
# The part of an element's box that is in view: its bounding box cut by every ancestor that clips its content.
VISIBLE_BOX = """
let box = arguments[0].getBoundingClientRect();
let [left, top, right, bottom] = [box.left, box.top, box.right, box.bottom];
for (let node = arguments[0].parentElement; node; node = node.parentElement) {
  if (getComputedStyle(node).overflow === "visible") continue;
  const clip = node.getBoundingClientRect();
  [left, top, right, bottom] = [Math.max(left, clip.left), Math.max(top, clip.top), Math.min(right, clip.right),
                                Math.min(bottom, clip.bottom)];
}
return {left, top, right, bottom, width: right - left, height: bottom - top};
"""

# tests/conftest.py's blocker (this process stands for a machine where sculpt is not installed), then the script.
RUN_WITHOUT_SCULPT = NO_SCULPT + """
import runpy
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def settings(**overrides) -> dict:
    """The page's settings, in the order the endpoints take them after their own inputs."""
    values = {"prompt": PROMPT, "negative_prompt": "", "guidance_scale": 3.0, "steps": STEPS, "scheduler": "model",
              "seed": 0, "width": 32, "height": 32, "num_images": 1}  # fmt: skip
    return {**values, **overrides}


def reference(cls, folder: Path, seed: int = 0, num_images: int = 1, scheduler=None, **kwargs) -> list:
    """What sculpt's own pipeline makes for the same settings: image i seeded with seed + i."""
    pipe = cls.from_pretrained(folder)
    if scheduler is not None:
        pipe.scheduler = scheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe(PROMPT, guidance_scale=3.0, num_inference_steps=STEPS, num_images_per_prompt=num_images,
                generator=[torch.Generator().manual_seed(seed + i) for i in range(num_images)], **kwargs).images


def pixels(image) -> np.ndarray:
    if isinstance(image, dict):  # a gallery item as gradio_client returns it
        image = image["image"]
    if not isinstance(image, PIL.Image.Image):
        image = PIL.Image.open(image)
    return np.asarray(image.convert("RGB"))


def assert_same_images(got: list, expected: list) -> None:
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(pixels(a), pixels(b))


def start_image() -> PIL.Image.Image:
    return PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))


def right_half(painted: bool = True) -> PIL.Image.Image:
    """A drawing layer as the image editor sends it: RGBA, the brush's strokes opaque on the right half."""
    layer = np.zeros((32, 32, 4), dtype=np.uint8)
    if painted:
        layer[:, 16:] = (255, 0, 255, 255)
    return PIL.Image.fromarray(layer, "RGBA")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("demo") / "model"
    LatentDiffusionPipeline(**make_components()).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def files(folder) -> dict[str, Path]:
    """The img2img image and the inpainting editor's background and layer, as files a client uploads."""
    out = {"image": folder.parent / "image.png", "layer": folder.parent / "layer.png",
           "blank": folder.parent / "blank.png"}  # fmt: skip
    start_image().save(out["image"])
    right_half().save(out["layer"])
    right_half(painted=False).save(out["blank"])
    return out


@pytest.fixture(scope="module")
def server(folder):
    """The app on a loopback port, loaded from the saved folder the way app.py loads it (remote code)."""
    demo = app.build_demo(str(folder))
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


@pytest.fixture
def client(server, tmp_path):
    return Client(server, verbose=False, download_files=str(tmp_path))


# ---------------------------------------------------------------------------------------------------------------------
# The folder carries the app
# ---------------------------------------------------------------------------------------------------------------------
def test_saved_folder_ships_a_self_contained_app(folder, tmp_path):
    source = (folder / "app.py").read_text()
    assert source.startswith(SHIPPED_CODE_MARKER)
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"relative import of {node.module!r} left in app.py"
            imported.add(node.module.split(".")[0])
    allowed = set(sys.stdlib_module_names) | {"torch", "diffusers", "transformers", "numpy", "PIL", "huggingface_hub",
                                              "gradio"}  # fmt: skip
    assert imported <= allowed, imported - allowed
    for cls in ("LatentDiffusionPipeline", "LatentDiffusionImg2ImgPipeline", "LatentDiffusionInpaintPipeline"):
        assert f"class {cls}(" in source  # the three tasks' code travels with the app
    requirements = (folder / "requirements.txt").read_text().splitlines()
    assert requirements[0].startswith(SHIPPED_CODE_MARKER)
    assert [line.split(">=")[0] for line in requirements[1:]] == ["torch", "diffusers", "transformers"]

    # A push uploads them, and the model card says how to use them.
    from training import hub

    assert {"app.py", "requirements.txt"} <= set(hub.pipeline_files(folder))
    assert "`pip install gradio && python app.py`" in hub.build_model_card(folder).text

    # A re-save replaces both (no stale copy), and keeps a requirements.txt the user wrote.
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    (copy / "app.py").write_text(SHIPPED_CODE_MARKER + "\n# an older copy\n")
    LatentDiffusionPipeline.from_pretrained(copy).save_pretrained(copy)
    assert (copy / "app.py").read_text() == source
    (copy / "requirements.txt").write_text("torch\ndiffusers\ntransformers\nmy-extra\n")
    LatentDiffusionPipeline.from_pretrained(copy).save_pretrained(copy)
    assert (copy / "requirements.txt").read_text().endswith("my-extra\n")


# ---------------------------------------------------------------------------------------------------------------------
# Each endpoint gives the pipeline's own images
# ---------------------------------------------------------------------------------------------------------------------
def test_text_to_image_endpoint_equals_the_pipeline(client, folder):
    gallery, info = client.predict(*settings(num_images=2, seed=5).values(), api_name="/text_to_image")
    assert_same_images(gallery, reference(LatentDiffusionPipeline, folder, seed=5, num_images=2))
    assert info.startswith("2 images, 3 steps of DDPMScheduler, seeds 5–6")

    from diffusers import DPMSolverMultistepScheduler

    gallery, info = client.predict(*settings(scheduler="dpm").values(), api_name="/text_to_image")
    assert_same_images(gallery, reference(LatentDiffusionPipeline, folder, scheduler=DPMSolverMultistepScheduler))
    assert "DPMSolverMultistepScheduler" in info
    gallery, info = client.predict(*settings().values(), api_name="/text_to_image")  # back to the model's own
    assert_same_images(gallery, reference(LatentDiffusionPipeline, folder))
    assert "DDPMScheduler" in info


def test_image_to_image_endpoint_equals_the_pipeline(client, folder, files):
    gallery, info = client.predict(handle_file(str(files["image"])), 0.7, *settings().values(),
                                   api_name="/image_to_image")  # fmt: skip
    expected = reference(LatentDiffusionImg2ImgPipeline, folder, image=start_image(), strength=0.7, height=32, width=32)
    assert_same_images(gallery, expected)
    assert "2 steps" in info  # int(3 * 0.7) of the 3 steps run


def test_inpaint_endpoint_equals_the_pipeline(client, folder, files):
    editor = {"background": handle_file(str(files["image"])), "layers": [handle_file(str(files["layer"]))],
              "composite": None}  # fmt: skip
    gallery, _ = client.predict(editor, 1.0, *settings().values(), api_name="/inpaint")
    mask = np.zeros((32, 32), dtype=np.uint8)
    mask[:, 16:] = 255  # where the layer is painted, whatever its colour
    expected = reference(LatentDiffusionInpaintPipeline, folder, image=start_image(),
                         mask_image=PIL.Image.fromarray(mask), strength=1.0, height=32, width=32)  # fmt: skip
    assert_same_images(gallery, expected)
    # The kept (left) half is the original image through the VAE; the repainted half differs from it.
    assert not np.array_equal(pixels(gallery[0])[:, 16:], np.asarray(start_image())[:, 16:])


# ---------------------------------------------------------------------------------------------------------------------
# Bad values are messages in the page
# ---------------------------------------------------------------------------------------------------------------------
BAD_VALUES = {
    "steps_0": ("/text_to_image", {"steps": 0}, r"Steps \(num_inference_steps\): 0 must be >= 1"),
    "width_not_multiple": ("/text_to_image", {"width": 31}, r"`width`: 31 must be a positive multiple of the VAE"),
    "guidance_negative": ("/text_to_image", {"guidance_scale": -1}, r"Value -1(\.0)? is less than minimum value 0"),
    "no_image": ("/image_to_image", {}, r"Image: upload the image to start from"),
    "strength_0": ("/image_to_image", {"strength": 0}, r"`strength`: 0(\.0)? must be in \(0, 1\]"),
    "empty_mask": ("/inpaint", {}, r"Mask: nothing is painted; paint over the part of the image to repaint"),
}


@pytest.mark.parametrize("case", list(BAD_VALUES))
def test_bad_values_come_back_as_the_message(client, files, case):
    endpoint, overrides, message = BAD_VALUES[case]
    strength = overrides.pop("strength", 0.7)
    args = list(settings(**overrides).values())
    if endpoint == "/image_to_image":
        args = [handle_file(str(files["image"])) if "strength" in case else None, strength, *args]
    elif endpoint == "/inpaint":
        editor = {"background": handle_file(str(files["image"])), "layers": [handle_file(str(files["blank"]))],
                  "composite": None}  # fmt: skip
        args = [editor, strength, *args]
    with pytest.raises(AppError, match=message) as error:
        client.predict(*args, api_name=endpoint)
    assert "Traceback" not in str(error.value) and "File \"" not in str(error.value)


def test_plain_functions_raise_value_errors(folder):
    pipelines = app.load_pipelines(folder)
    with pytest.raises(ValueError, match=r"Number of images: 9 must be from 1 to 8"):
        app.text_to_image(pipelines, PROMPT, num_images=9)
    with pytest.raises(ValueError, match=r"`scheduler`: 'heun' is not one of \['model', 'ddim'"):
        app.text_to_image(pipelines, PROMPT, scheduler="heun", steps=2)
    with pytest.raises(ValueError, match=r"Steps \(num_inference_steps\): 2.5 must be a whole number"):
        app.text_to_image(pipelines, PROMPT, steps=2.5)  # the page's field rounds; a script may not
    with pytest.raises(ValueError, match=r"Seed: -1 must be >= 0"):
        app.text_to_image(pipelines, PROMPT, seed=-1)
    with pytest.raises(ValueError, match=r"Mask: nothing is painted"):
        app.inpaint(pipelines, start_image(), None, 1.0, PROMPT)
    assert app.editor_image_and_mask(None) == (None, None)


# ---------------------------------------------------------------------------------------------------------------------
# Progress, queueing, stop
# ---------------------------------------------------------------------------------------------------------------------
def test_progress_is_reported_every_step(folder):
    pipelines = app.load_pipelines(folder)
    calls = []
    result = app.image_to_image(pipelines, start_image(), 0.8, PROMPT, steps=5,
                                progress=lambda value, **kwargs: calls.append(value))  # fmt: skip
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]  # int(5 * 0.8) = 4 steps run
    assert not result.stopped and result.info.startswith("1 image, 4 steps of DDPMScheduler")


def test_second_request_queues_and_stop_interrupts_the_running_one(server, folder, tmp_path):
    first = Client(server, verbose=False, download_files=str(tmp_path / "a"))
    second = Client(server, verbose=False, download_files=str(tmp_path / "b"))  # another visitor
    long_run = first.submit(*settings(steps=400).values(), api_name="/text_to_image")
    seen_progress, seen_queued = None, False
    deadline = time.monotonic() + 60
    while seen_progress is None and time.monotonic() < deadline:
        status = long_run.status()
        seen_progress = status.progress_data[0] if status.progress_data else None
        time.sleep(0.05)
    assert seen_progress is not None and seen_progress.length == 400 and seen_progress.unit == "steps"
    waiting = second.submit(*settings(seed=3).values(), api_name="/text_to_image")
    while time.monotonic() < deadline and not seen_queued:
        seen_queued = waiting.status().code == gradio_client.utils.Status.IN_QUEUE
        time.sleep(0.05)
    assert seen_queued and long_run.status().code == gradio_client.utils.Status.PROGRESS
    assert not waiting.done()

    assert first.predict(api_name="/stop") == "Stopping after the current step..."
    gallery, info = long_run.result(timeout=60)
    assert info.startswith("Stopped after step ") and info.split()[3] != "400", info
    assert len(gallery) == 1  # the partly denoised image is still shown
    gallery, info = waiting.result(timeout=60)  # then the queued one runs, unaffected
    assert_same_images(gallery, reference(LatentDiffusionPipeline, folder, seed=3))
    assert second.predict(api_name="/stop") == "Nothing is running."


def test_stop_event_interrupts_the_plain_function(folder):
    pipelines = app.load_pipelines(folder)
    stop = threading.Event()
    calls = []

    def progress(value, **kwargs):
        calls.append(value)
        if value[0] == 2:
            stop.set()  # "Stop" pressed during step 2

    result = app.text_to_image(pipelines, PROMPT, steps=10, progress=progress, stop=stop)
    assert result.stopped and calls == [(1, 10), (2, 10)]
    assert result.info.startswith("Stopped after step 2 of 10") and len(result.images) == 1


# ---------------------------------------------------------------------------------------------------------------------
# Stable Diffusion-format folders, LoRA
# ---------------------------------------------------------------------------------------------------------------------
def stable_diffusion_folder(path: Path, seed: int = 0) -> Path:
    components = make_components(seed)
    components["scheduler"] = PNDMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                            skip_prk_steps=True, steps_offset=1)  # fmt: skip
    StableDiffusionPipeline(**components, safety_checker=None, feature_extractor=None,
                            requires_safety_checker=False).save_pretrained(path)  # fmt: skip
    return path


def test_stable_diffusion_folder_runs_with_diffusers_pipelines(tmp_path):
    folder = stable_diffusion_folder(tmp_path / "sd")
    pipelines = app.load_pipelines(folder)
    assert [type(p) for p in pipelines[:2]] == [StableDiffusionPipeline, StableDiffusionImg2ImgPipeline]
    result = app.text_to_image(pipelines, PROMPT, guidance_scale=3.0, steps=STEPS, seed=2)
    sd = StableDiffusionPipeline.from_pretrained(folder)
    sd.set_progress_bar_config(disable=True)
    expected = sd(PROMPT, guidance_scale=3.0, num_inference_steps=STEPS, height=32, width=32,
                  generator=[torch.Generator().manual_seed(2)]).images  # fmt: skip
    assert_same_images(result.images, expected)
    assert "PNDMScheduler" in result.info


@pytest.mark.parametrize("kind", ["sculpt", "stable_diffusion"])
def test_lora_is_applied_to_all_tasks(tmp_path, kind):
    """sculpt's pipelines have diffusers' LoRA loader, as StableDiffusionPipeline does: the LoRA changes the images,
    and scale 0 gives the base model's."""
    pytest.importorskip("peft", reason="diffusers' LoRA loader needs peft: pip install -e '.[lora]'")
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    if kind == "sculpt":
        folder = tmp_path / "model"
        LatentDiffusionPipeline(**make_components()).save_pretrained(folder)
    else:
        folder = stable_diffusion_folder(tmp_path / "sd")
    unet = make_components()["unet"]
    torch.manual_seed(1)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                target_modules=["to_q", "to_k", "to_v", "to_out.0"]))  # fmt: skip
    lora = tmp_path / "lora"
    StableDiffusionPipeline.save_lora_weights(
        lora, unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    )
    images = {}
    for scale in (None, 1.0, 0.0):
        pipelines = app.load_pipelines(folder)
        if scale is not None:
            app.apply_lora(pipelines, str(lora), scale)
        images[scale] = app.image_to_image(pipelines, start_image(), 1.0, PROMPT, steps=2).images
    assert not np.array_equal(pixels(images[1.0][0]), pixels(images[None][0]))
    assert_same_images(images[0.0], images[None])


def test_lora_for_another_model_is_one_line_exit_2(folder, tmp_path, capsys):
    """A LoRA file that does not fit the model (here: another UNet's widths) is one line naming it, exit 2."""
    pytest.importorskip("peft", reason="diffusers' LoRA loader needs peft: pip install -e '.[lora]'")
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = UNet2DConditionModel(sample_size=16, block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8,
                                cross_attention_dim=32, attention_head_dim=4, down_block_types=("DownBlock2D",
                                "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"))  # fmt: skip
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    StableDiffusionPipeline.save_lora_weights(tmp_path / "lora", unet_lora_layers=get_peft_model_state_dict(unet))
    with pytest.raises(SystemExit) as exit_info:
        load_script().main([str(folder), "--lora", str(tmp_path / "lora")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("demo.py: error:") == 1 and "Traceback" not in err
    assert err.splitlines()[-1].startswith("demo.py: error: --lora: '") and "made for another model" in err


# ---------------------------------------------------------------------------------------------------------------------
# The CLI
# ---------------------------------------------------------------------------------------------------------------------


def load_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("demo_cli", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "args, message",
    [
        (["{tmp}"], "MODEL: {tmp} has no model_index.json"),
        (["./missing"], "MODEL: no such folder: ./missing"),
        (["{model}", "--port", "0"], "--port: 0 must be in 1..65535."),
        (["{model}", "--port", "x"], "argument --port: invalid int value: 'x'"),
        (["{model}", "--lora", "./missing-lora"], "--lora: no such file or folder: ./missing-lora"),
        (["{model}", "--lora_scale", "0.5"], "--lora_scale needs --lora"),
    ],
    ids=["no_model_index", "missing_folder", "port_0", "port_text", "lora_missing", "scale_without_lora"],
)
def test_bad_arguments_print_one_line_and_exit_2(folder, tmp_path, args, message):
    names = {"tmp": tmp_path, "model": folder}
    result = subprocess.run([sys.executable, "-c", TORCH_PROBE, str(SCRIPT), *[a.format(**names) for a in args]],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path, check=False)  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message.format(**names) in result.stderr, result.stderr
    assert result.stdout == "torch not imported\n"


@pytest.mark.parametrize("device", ["bogus", "cuda"] if not torch.cuda.is_available() else ["bogus"])
def test_a_device_torch_cannot_use_is_one_line_exit_2(folder, capsys, device):
    with pytest.raises(SystemExit) as exit_info:
        load_script().main([str(folder), "--device", device])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"demo.py: error: --device: {device!r} is not a device torch can use here: ") and \
        err.count("\n") == 1, err  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------------
# The shipped app.py, where sculpt is not installed
# ---------------------------------------------------------------------------------------------------------------------
def test_shipped_app_serves_images_without_sculpt(folder, tmp_path):
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip
    env.pop("PYTHONPATH", None)
    log = (tmp_path / "app.log").open("w")
    # --device cpu: where the reference runs, also on a machine with a GPU.
    command = [sys.executable, "-c", RUN_WITHOUT_SCULPT, str(folder / "app.py"), "--host", "127.0.0.1", "--port",
               str(port), "--device", "cpu"]  # fmt: skip
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None, (tmp_path / "app.log").read_text()[-4000:]
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            assert time.monotonic() < deadline, "app.py did not start serving"
            time.sleep(0.2)
        client = Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=str(tmp_path / "out"))
        gallery, _ = client.predict(*settings(seed=4).values(), api_name="/text_to_image")
        assert_same_images(gallery, reference(LatentDiffusionPipeline, folder, seed=4))
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()
    assert "is blocked" not in (tmp_path / "app.log").read_text()


# ---------------------------------------------------------------------------------------------------------------------
# A real browser
# ---------------------------------------------------------------------------------------------------------------------
def test_browser_shows_the_generated_image(server, folder, tmp_path):
    """Headless chromium loads the page, types a prompt, clicks Generate, and the gallery shows the image the
    pipeline makes; the screenshot is kept in outputs/test-artifacts/demo.png (and copied to docs/images/demo.png,
    the README's, when SCULPT_UPDATE_DOCS_SCREENSHOT=1)."""
    if not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()):
        pytest.skip(f"no headless browser: {INSTALL_BROWSER}")
    webdriver = pytest.importorskip("selenium.webdriver", reason=f"selenium is not installed: {INSTALL_BROWSER}")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1280,800", f"--user-data-dir={tempfile.mkdtemp(dir=tmp_path)}"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.set_page_load_timeout(60)
        driver.get(server)
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#prompt textarea"))[0].send_keys(PROMPT)
        driver.find_element(By.ID, "generate").click()
        images = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#gallery img"))
        wait.until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", images[0]))
        wait.until(lambda d: "steps of" in d.find_element(By.ID, "info").text)
        info = driver.find_element(By.ID, "info").text
        screenshot = PIL.Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
        scale = screenshot.width / driver.execute_script("return window.innerWidth")
        image_box = images[0].rect  # where the image is drawn, in CSS pixels, and the part of it in view
        visible = driver.execute_script(VISIBLE_BOX, images[0])
        source = images[0].get_attribute("src")
    finally:
        driver.quit()

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    screenshot.save(ARTIFACTS / "demo.png")
    print(f"screenshot: {ARTIFACTS / 'demo.png'}")
    if os.environ.get("SCULPT_UPDATE_DOCS_SCREENSHOT") == "1":
        (ROOT / "docs" / "images").mkdir(exist_ok=True)
        screenshot.save(ROOT / "docs" / "images" / "demo.png")
    # The page asked for the defaults: one image, the pipeline's default steps and guidance, seed 0.
    assert info.startswith("1 image, 50 steps of DDPMScheduler, seed 0"), info
    assert source.endswith(".png")
    # The screenshot shows that image where the page draws it: the visible part of the drawn square, scaled down,
    # matches the pipeline's image scaled up the way the browser does (smoothly) and cut to the same part.
    pipe = LatentDiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(PROMPT, generator=[torch.Generator().manual_seed(0)]).images[0]
    left, top = visible["left"] - image_box["x"], visible["top"] - image_box["y"]
    size = (round(image_box["width"]), round(image_box["height"]))
    cut = (left, top, left + visible["width"], top + visible["height"])
    expected = expected.resize(size, PIL.Image.BILINEAR).crop([round(v) for v in cut])
    drawn = screenshot.crop([round(v * scale) for v in (visible["left"], visible["top"], visible["right"],
                                                       visible["bottom"])])  # fmt: skip
    small = (max(1, round(visible["width"] / 16)), max(1, round(visible["height"] / 16)))
    shown, wanted = (np.asarray(im.resize(small, PIL.Image.BOX)).astype(float) for im in (drawn, expected))
    assert visible["width"] > 100 and visible["height"] > 100, visible
    assert np.abs(shown - wanted).mean() < 6, np.abs(shown - wanted).mean()
    assert shown.std() > 20  # and it is the image, not a flat placeholder
