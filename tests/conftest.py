"""Tiny but real components, built locally (nothing comes from the Hub): a CLIP-format tokenizer trained on the
shapes captions, a 2-layer CLIPTextModel, a two-block AutoencoderKL and a small UNet2DConditionModel. Also what the
training tests share: the `fresh_accelerate_state` fixture, `tiny()` configs and `accelerate launch` commands."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.yaml")

SHAPES_CAPTION = re.compile(r"^a (small|large) (red|green|blue|yellow|purple|cyan) (circle|square|triangle) on a "
                            r"(white|black|gray) background$")  # the shapes grammar, spelled out
CAPTIONS = [
    f"a {size} {color} {shape} on a {bg} background"
    for size in ("small", "large")
    for color in ("red", "green", "blue", "yellow", "purple", "cyan")
    for shape in ("circle", "square", "triangle")
    for bg in ("white", "black", "gray")
]


def make_tokenizer(model_max_length: int = 77):
    from training.tokenizer import train_clip_tokenizer

    return train_clip_tokenizer(CAPTIONS, vocab_size=600, model_max_length=model_max_length)


def make_components(seed: int = 0, scheduler=None) -> dict:
    """vae (32px images -> 4x16x16 latents), text_encoder, tokenizer, unet, scheduler; deterministic from `seed`."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from pipelines import DDPMScheduler

    tokenizer = make_tokenizer()
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=8,
        cross_attention_dim=32,
        attention_head_dim=4,
    )
    for module in (vae, text_encoder, unet):
        module.eval()
    if scheduler is None:
        scheduler = DDPMScheduler(
            beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False, steps_offset=1
        )
    return {"vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer, "unet": unet, "scheduler": scheduler}


def make_lora_file(folder, seed: int = 1, rank: int = 4, alpha: float = 8, text_encoder: bool = False,
                   metadata: bool = True):
    """A LoRA for `make_components()`, written the way diffusers' LoRA scripts write one: peft adapters on the UNet (and
    the text encoder's q/k/v/out_proj), `get_peft_model_state_dict`, `StableDiffusionPipeline.save_lora_weights` with
    the adapters' LoraConfig as metadata (so α ≠ r loads right). Returns `folder` (pytorch_lora_weights.safetensors)."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict

    parts = make_components()
    torch.manual_seed(seed)
    parts["unet"].add_adapter(LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights=False,
                                         target_modules=["to_q", "to_k", "to_v", "to_out.0"]))  # fmt: skip
    kwargs = {"unet_lora_layers": convert_state_dict_to_diffusers(get_peft_model_state_dict(parts["unet"]))}
    if metadata:
        kwargs["unet_lora_adapter_metadata"] = parts["unet"].peft_config["default"].to_dict()
    if text_encoder:  # peft's injection: transformers 5.24's add_adapter asks for peft >= 0.22
        config = LoraConfig(r=2, lora_alpha=2, init_lora_weights=False,
                            target_modules=["q_proj", "k_proj", "v_proj", "out_proj"])  # fmt: skip
        inject_adapter_in_model(config, parts["text_encoder"])
        kwargs["text_encoder_lora_layers"] = convert_state_dict_to_diffusers(
            get_peft_model_state_dict(parts["text_encoder"]))
        if metadata:
            kwargs["text_encoder_lora_adapter_metadata"] = config.to_dict()
    StableDiffusionPipeline.save_lora_weights(folder, **kwargs)
    return folder


# Preludes for `python -c PRELUDE script.py ...` subprocesses, shared by the CLI and sharing tests.
# Runs the script as __main__ and then says on stdout whether torch was ever imported: an argument error found before
# that has loaded no model and sampled nothing.
TORCH_PROBE = """
import runpy, sys
sys.argv = sys.argv[1:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
finally:
    print("torch imported" if "torch" in sys.modules else "torch not imported")
"""

NO_SCULPT = '''
import importlib.abc, sys
class _BlockSculpt(importlib.abc.MetaPathFinder):
    """This process stands for a machine where sculpt is not installed."""
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("pipelines", "training"):
            raise ImportError(f"{name} is blocked: sculpt is not installed here")
sys.meta_path.insert(0, _BlockSculpt())
for _name in ("pipelines", "training"):
    try:
        __import__(_name)
    except ImportError:
        pass
    else:
        raise SystemExit(f"{_name} is importable: the blocker does not work")
'''


@pytest.fixture
def components():
    return make_components()


# ---------------------------------------------------------------------------------------------------------------------
# Training tests
# ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture
def fresh_accelerate_state():
    """Each in-process run builds its own Accelerator; forget the previous one's singleton state afterwards. Test files
    that train in-process use it for every test: `pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")`."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()


@pytest.fixture
def partial_state():
    """accelerate's logger (in training/data.py) needs a state, as under `accelerate launch`."""
    from accelerate import PartialState

    PartialState()


def data_config(tmp_path: Path, *overrides: str):
    """configs/tiny.yaml with its `datasets` cache in `tmp_path`, for the data-loading tests."""
    from training.config import load_config

    return load_config(TINY, [f"cache_dir={tmp_path / 'hf-cache'}", *overrides])


def image_bytes(dataset) -> list[bytes]:
    """The decoded pixels of a dataset's `image` column, to compare datasets image for image."""
    import numpy as np

    return [np.asarray(image).tobytes() for image in dataset["image"]]


def tiny(output_dir: str | Path, *overrides: str):
    """configs/tiny.yaml training into `output_dir`, with validation and periodic checkpoints off unless `overrides`
    turn them back on."""
    from training.config import load_config

    return load_config(
        TINY, [f"output_dir={output_dir}", "validation_steps=null", "checkpointing_steps=null", *overrides]
    )


def accelerate_launch(num_processes: int = 1, port: int | None = None) -> list[str]:
    """The `accelerate launch` command line (without the script) for CPU runs that need no accelerate config file:
    one process, or `num_processes` in one gloo DDP group on `port` (distinct per test, so tests can overlap)."""
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1", "--mixed_precision", "no",
              "--dynamo_backend", "no"]  # fmt: skip
    if num_processes == 1:
        return [*launch, "--num_processes", "1"]
    return [*launch, "--multi_gpu", "--num_processes", str(num_processes), "--main_process_port", str(port)]


def wait_until_frozen(process: subprocess.Popen, timeout: float = 300) -> None:
    """Until `process` has stopped itself (SIGSTOP through the hook): state T in /proc/<pid>/stat."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"exited with {process.returncode} before reaching the hook"
        if Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T":
            return
        time.sleep(0.05)
    process.kill()
    raise AssertionError("the run never reached the hook")
