"""Safe loading (issue 6, guarantee 7): weights load from safetensors only unless the user opts in, and no code from a
model folder runs unless the user passes `trust_remote_code` themselves.

Real pickles: a state dict written with `torch.save` (what the opt-in must load) and one whose unpickling would write
a marker file (what must never be unpickled); real folders written by `save_pretrained`, with code added to them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import make_components, tiny
from safetensors.torch import load_file, save_file

from pipelines import LatentDiffusionImg2ImgPipeline, LatentDiffusionPipeline
from training.checkpoint import STATE_FILE
from training.train import main

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.yaml")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
FROM_FOLDER = ["unet_config={}", "vae_config={}", "text_encoder_config={}"]  # every part comes from the folder

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


class _WritesMarker:
    """Unpickling this calls Path(marker).write_text("pickle code ran"): what a malicious pickle can do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.write_text, (Path(self.marker), "pickle code ran")


def to_pickle(folder: Path) -> Path:
    """Replace `folder`'s safetensors weights with a pickle of the same tensors, under the library's pickle name."""
    diffusers_model = (folder / "diffusion_pytorch_model.safetensors").is_file()
    safe = folder / ("diffusion_pytorch_model.safetensors" if diffusers_model else "model.safetensors")
    pickled = folder / ("diffusion_pytorch_model.bin" if diffusers_model else "pytorch_model.bin")
    torch.save(load_file(safe), pickled)
    safe.unlink()
    return pickled


@pytest.fixture(scope="module")
def saved_pipeline(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pipeline")
    LatentDiffusionPipeline(**make_components()).save_pretrained(folder)
    return folder


def copy_of(folder: Path, tmp_path: Path, name: str = "copy") -> Path:
    shutil.copytree(folder, tmp_path / name)
    return tmp_path / name


# ---- pipelines -------------------------------------------------------------------------------------------------------


def test_pipelines_refuse_pickled_weights_unless_use_safetensors_false(saved_pipeline, tmp_path):
    folder = copy_of(saved_pipeline, tmp_path)
    expected = load_file(folder / "unet" / "diffusion_pytorch_model.safetensors")
    to_pickle(folder / "unet")
    for cls in (LatentDiffusionPipeline, LatentDiffusionImg2ImgPipeline):
        with pytest.raises(ValueError, match=r"holds weights only as pickle \(unet/diffusion_pytorch_model\.bin\), "
                                             r"which can run arbitrary code.*pass use_safetensors=False"):
            cls.from_pretrained(folder)
    # The opt-in loads the pickle, and still the safetensors of the other parts (diffusers' own False would not).
    pipe = LatentDiffusionPipeline.from_pretrained(folder, use_safetensors=False)
    assert all(torch.equal(pipe.unet.state_dict()[k], v) for k, v in expected.items())


def test_a_malicious_pickle_is_never_unpickled(saved_pipeline, tmp_path):
    folder, marker = copy_of(saved_pipeline, tmp_path), tmp_path / "marker"
    torch.save(_WritesMarker(marker), folder / "vae" / "diffusion_pytorch_model.bin")
    (folder / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    with open(folder / "vae" / "diffusion_pytorch_model.bin", "rb") as f:  # the file really is that pickle
        assert b"write_text" in f.read()
    with pytest.raises(ValueError, match=r"vae/diffusion_pytorch_model\.bin"):
        LatentDiffusionPipeline.from_pretrained(folder)
    with pytest.raises(ValueError, match=r"`pretrained_model_name_or_path`: .* holds the vae weights only as pickle"):
        main(tiny(tmp_path / "run", f"pretrained_model_name_or_path={folder}", *FROM_FOLDER))
    assert not marker.exists()


def load_sample_script():
    spec = importlib.util.spec_from_file_location("sample_cli", ROOT / "scripts" / "sample.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sample_cli_refuses_pickles_in_one_line_unless_allow_pickle(saved_pipeline, tmp_path, capsys):
    folder = copy_of(saved_pipeline, tmp_path)
    to_pickle(folder / "unet")
    sample = load_sample_script()
    args = [str(folder), "--prompt", "a red circle", "--num_images", "1", "--steps", "2"]
    with pytest.raises(SystemExit) as exit_info:
        sample.main([*args, "--out", str(tmp_path / "refused.png")])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "unet/diffusion_pytorch_model.bin" in error and "pass --allow_pickle" in error
    assert not (tmp_path / "refused.png").exists()
    sample.main([*args, "--out", str(tmp_path / "allowed.png"), "--allow_pickle"])
    assert (tmp_path / "allowed.png").is_file()


# ---- training: pretrained parts --------------------------------------------------------------------------------------


def test_training_refuses_pickled_parts_before_loading_data_and_loads_them_with_allow_pickle(saved_pipeline, tmp_path):
    folder = copy_of(saved_pipeline, tmp_path)
    to_pickle(folder / "unet")
    to_pickle(folder / "text_encoder")
    # A dataset that does not exist: the pickle refusal must come first, before any data is read.
    no_data = ["dataset_name=none", f"train_data_dir={tmp_path / 'no-such-data'}"]
    with pytest.raises(ValueError, match=r"`pretrained_model_name_or_path`: '.*/copy/text_encoder' holds the "
                                         r"text_encoder weights only as pickle \(pytorch_model\.bin\).*"
                                         r"allow_pickle=true"):
        main(tiny(tmp_path / "refused", f"pretrained_model_name_or_path={folder}", *FROM_FOLDER, *no_data))
    assert not (tmp_path / "refused").exists()

    out = main(tiny(tmp_path / "allowed", f"pretrained_model_name_or_path={folder}", *FROM_FOLDER, "allow_pickle=true",
                    "max_train_steps=1", "use_ema=false", "validation_prompts=[]", "train_text_encoder=false"))
    # The pickled text encoder was loaded (frozen, so saved unchanged), as safetensors now.
    original = load_file(saved_pipeline / "text_encoder" / "model.safetensors")
    saved = load_file(out / "text_encoder" / "model.safetensors")
    assert original.keys() == saved.keys() and all(torch.equal(original[k], saved[k]) for k in original)


def test_training_cli_pickle_refusal_is_one_line_exit_2(saved_pipeline, tmp_path):
    folder = copy_of(saved_pipeline, tmp_path)
    to_pickle(folder / "vae")
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train.py"), "--config", TINY, f"output_dir={tmp_path / 'out'}",
         f"pretrained_model_name_or_path={folder}", *FROM_FOLDER],
        capture_output=True, text=True, env=ENV, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: `pretrained_model_name_or_path`:"), result.stderr
    assert "vae weights only as pickle (diffusion_pytorch_model.bin)" in lines[0] and "Traceback" not in result.stderr


# ---- training: checkpoints -------------------------------------------------------------------------------------------


def pickle_checkpoint(checkpoint: Path) -> None:
    """What an older accelerate (safe_serialization=False) writes: the models' weights as pytorch_model[_i].bin.
    trainer_state.json is rewritten to list them, so the checkpoint is complete, only pickled."""
    for safe in sorted(checkpoint.glob("model*.safetensors")):
        torch.save(load_file(safe), checkpoint / (safe.name.replace("model", "pytorch_model", 1)[: -len(".safetensors")]
                                                  + ".bin"))
        safe.unlink()
    state = json.loads((checkpoint / STATE_FILE).read_text())
    state["files"] = {str(p.relative_to(checkpoint)): p.stat().st_size for p in sorted(checkpoint.rglob("*"))
                      if p.is_file() and p.name != STATE_FILE}  # fmt: skip
    (checkpoint / STATE_FILE).write_text(json.dumps(state))


def test_resume_refuses_a_checkpoint_with_pickled_model_weights_unless_allow_pickle(tmp_path):
    run = ["max_train_steps=2", "checkpointing_steps=1", "validation_prompts=[]"]
    full = main(tiny(tmp_path / "full", *run))
    resumed = tmp_path / "resumed"
    shutil.copytree(full / "checkpoint-1", resumed / "checkpoint-1")
    pickle_checkpoint(resumed / "checkpoint-1")
    assert sorted(p.name for p in (resumed / "checkpoint-1").glob("*model*")) == ["pytorch_model.bin",
                                                                                   "pytorch_model_1.bin"]
    with pytest.raises(ValueError, match=r"`resume_from_checkpoint`: .*checkpoint-1' holds model weights only as "
                                         r"pickle \(pytorch_model\.bin, pytorch_model_1\.bin\).*allow_pickle=true"):
        main(tiny(resumed, *run, "resume_from_checkpoint=latest"))
    main(tiny(resumed, *run, "resume_from_checkpoint=latest", "allow_pickle=true"))
    a = load_file(full / "unet" / "diffusion_pytorch_model.safetensors")
    b = load_file(resumed / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)  # the pickled checkpoint held exactly the same state


def test_the_ema_folder_of_a_checkpoint_is_checked_too(tmp_path):
    from training.checkpoint import pickled_weights

    checkpoint = tmp_path / "checkpoint-3"
    (checkpoint / "unet_ema").mkdir(parents=True)
    save_file({"w": torch.zeros(2)}, checkpoint / "model.safetensors")
    torch.save({"w": torch.zeros(2)}, checkpoint / "unet_ema" / "diffusion_pytorch_model.bin")
    assert pickled_weights(checkpoint) == ["unet_ema/diffusion_pytorch_model.bin"]
    save_file({"w": torch.zeros(2)}, checkpoint / "unet_ema" / "diffusion_pytorch_model.safetensors")
    assert pickled_weights(checkpoint) == []


# ---- remote code -----------------------------------------------------------------------------------------------------

MARKER_CODE = "import pathlib\npathlib.Path({marker!r}).write_text('folder code ran: {where}')\n"


def plant_code(folder: Path, marker: Path) -> None:
    """Code that writes `marker` when imported, in every place a folder can carry code: the shipped pipeline and
    scheduler modules, and a transformers `auto_map` module beside the text encoder."""
    for path in (folder / "pipeline_latent_diffusion.py", folder / "scheduler" / "scheduling_ddpm.py"):
        path.write_text(path.read_text() + MARKER_CODE.format(marker=str(marker), where=path.name))  # runs on import
    (folder / "text_encoder" / "custom_clip.py").write_text(MARKER_CODE.format(marker=str(marker), where="auto_map"))
    config = json.loads((folder / "text_encoder" / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "custom_clip.CustomCLIP"}
    (folder / "text_encoder" / "config.json").write_text(json.dumps(config))


def test_no_code_from_a_model_folder_runs_when_sculpt_loads_it(saved_pipeline, tmp_path):
    folder, marker = copy_of(saved_pipeline, tmp_path), tmp_path / "marker"
    plant_code(folder, marker)
    pipe = LatentDiffusionPipeline.from_pretrained(folder)  # the installed classes, for pipeline and scheduler
    assert type(pipe.scheduler).__module__ == "pipelines.scheduling_ddpm"
    main(tiny(tmp_path / "run", f"pretrained_model_name_or_path={folder}", *FROM_FOLDER), dry_run=True)
    assert not marker.exists()

    # A component whose code exists only in the folder: refused, naming the file, until the caller trusts it.
    shutil.copy(folder / "scheduler" / "scheduling_ddpm.py", folder / "scheduler" / "scheduling_custom.py")
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "scheduler": ["scheduling_custom", "DDPMScheduler"]}))
    with pytest.raises(ValueError, match=r"(?s)custom code in scheduling_custom\.py.*trust_remote_code=True"):
        LatentDiffusionPipeline.from_pretrained(folder)
    assert not marker.exists()
    LatentDiffusionPipeline.from_pretrained(folder, trust_remote_code=True)  # the caller's own opt-in
    assert marker.read_text() == "folder code ran: scheduling_ddpm.py"  # (the planted code is real)
