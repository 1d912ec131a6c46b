"""Sharing what sculpt trains: self-contained pipeline folders, loading them where sculpt is not installed, the model
card, pushing to the Hub, and loading pretrained parts and datasets by Hub id.

"Without sculpt" is a subprocess whose first `sys.meta_path` finder refuses `pipelines` and `training`, started
outside the repository; it checks that the blocker works before anything else. "The Hub" is tests/hub_server.py, a
test double on loopback that the real huggingface_hub client (and diffusers, transformers, datasets through it) talks
to over HTTP. Images are compared exactly (`assert_array_equal` on float32 arrays): the same code on the same weights,
seeds and CPU gives the same bits in another process.
"""

from __future__ import annotations

import ast
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import NO_SCULPT, make_components
from diffusers import DiffusionPipeline, DPMSolverMultistepScheduler, PNDMScheduler, StableDiffusionPipeline
from hub_server import HubServer

from pipelines import (
    DDPMScheduler,
    LatentDiffusionImg2ImgPipeline,
    LatentDiffusionInpaintPipeline,
    LatentDiffusionPipeline,
)
from pipelines.portable import SHIPPED_CODE_MARKER
from training import hub as sharing
from training.builtin.shapes import make_shapes_dataset
from training.config import load_config
from training.data import write_imagefolder
from training.train import main

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.yaml")
PROMPT = "a small red circle on a white background"
STEPS = 3
WRITE, READ_ONLY, BOB = "hf_alice_write", "hf_alice_read", "hf_bob_write"
CLASSES = {"t2i": LatentDiffusionPipeline, "img2img": LatentDiffusionImg2ImgPipeline,
           "inpaint": LatentDiffusionInpaintPipeline}
# What shipped code may import: the standard library, torch, diffusers, transformers, and diffusers' own dependencies.
ALLOWED_IMPORTS = set(sys.stdlib_module_names) | {"torch", "diffusers", "transformers", "numpy", "PIL",
                                                  "huggingface_hub"}


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    from accelerate.state import AcceleratorState, GradientState, PartialState

    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()


@pytest.fixture(scope="module")
def hub():
    with HubServer(
        tokens={WRITE: ("alice", "write"), READ_ONLY: ("alice", "read"), BOB: ("bob", "write")},
        orgs={"sculpt-org": {"alice": "write"}, "readers": {"alice": "read"}},
    ) as server:
        server.add_repo("bob/taken", {"README.md": b"bob's model\n"})
        yield server


@pytest.fixture
def hub_client(hub, monkeypatch, tmp_path):
    """This process's huggingface_hub talks to the double, as `HF_ENDPOINT`, `HF_TOKEN`, `HF_HUB_DISABLE_XET=1` set
    before import would make it (conftest sets HF_HUB_OFFLINE=1 for the rest of the suite); no token file is read."""
    from huggingface_hub import constants, hf_api

    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(hf_api.api, "endpoint", hub.url)  # the HfApi behind `create_repo`, `upload_folder`, ...
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token-file"))
    monkeypatch.setenv("HF_TOKEN", WRITE)
    return hub


def hub_env(hub: HubServer | None, home: Path, **extra: str) -> dict[str, str]:
    """A subprocess environment that reaches the double the way a user reaches the Hub (`hub`), with its own empty
    cache (and diffusers' remote-code module cache) under `home`."""
    env = {**os.environ, "HF_TOKEN": WRITE, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1", "HF_HOME": str(home),
           "HF_HUB_DISABLE_TELEMETRY": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("HF_MODULES_CACHE", None)
    env.pop("HF_ENDPOINT", None)
    if hub is not None:
        env["HF_ENDPOINT"] = hub.url
    return {**env, **extra}


def run_without_sculpt(body: str, args: dict, env: dict, cwd: Path) -> dict:
    script = cwd / "script.py"
    script.write_text(NO_SCULPT + textwrap.dedent(body))
    result = subprocess.run([sys.executable, str(script), json.dumps(args)], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads((cwd / "results.json").read_text())


def generate(pipe, **kwargs) -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    return pipe(PROMPT, num_inference_steps=STEPS, output_type="np", generator=torch.Generator().manual_seed(0),
                **kwargs).images


def image_inputs() -> dict[str, dict]:
    image = np.random.default_rng(0).random((32, 32, 3)).astype(np.float32)
    mask = np.zeros((32, 32), dtype=np.float32)
    mask[:, 16:] = 1.0
    return {"img2img": {"image": image, "strength": 0.7}, "inpaint": {"image": image, "mask_image": mask}}


def snapshot(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------------------------------
# Portable folders
# ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """The tiny components saved by each pipeline class, and once more with DPM-Solver swapped in."""
    root = tmp_path_factory.mktemp("folders")
    components = make_components()
    out = {}
    for kind, cls in CLASSES.items():
        cls(**components).save_pretrained(root / kind)
        out[kind] = root / kind
    pipe = LatentDiffusionPipeline.from_pretrained(out["t2i"])
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    pipe.save_pretrained(root / "dpm")
    out["dpm"] = root / "dpm"
    return out


@pytest.fixture(scope="module")
def sculpt_images(folders) -> dict[str, np.ndarray]:
    """What sculpt's own classes generate from each folder: the reference for every other way of loading it."""
    images = {kind: generate(cls.from_pretrained(folders[kind]), **image_inputs().get(kind, {}))
              for kind, cls in CLASSES.items()}
    images["dpm"] = generate(LatentDiffusionPipeline.from_pretrained(folders["dpm"]))
    return images


def imported_modules(source: str) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            modules |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"relative import of {node.module!r} left in shipped code"
            modules.add(node.module.split(".")[0])
    return modules


@pytest.mark.parametrize("kind", list(CLASSES))
def test_saved_folder_is_self_contained(folders, kind):
    folder = folders[kind]
    index = json.loads((folder / "model_index.json").read_text())
    stem = {"t2i": "pipeline_latent_diffusion", "img2img": "pipeline_latent_diffusion_img2img",
            "inpaint": "pipeline_latent_diffusion_inpaint"}[kind]
    assert index["_class_name"] == [stem, CLASSES[kind].__name__]
    assert index["scheduler"] == ["scheduling_ddpm", "DDPMScheduler"]
    assert "_name_or_path" not in index
    for name in ("vae", "text_encoder", "tokenizer", "unet"):
        assert index[name][0] in ("diffusers", "transformers"), index[name]
    shipped = [folder / f"{stem}.py", folder / "scheduler" / "scheduling_ddpm.py"]
    for path in shipped:
        source = path.read_text()
        assert source.startswith(SHIPPED_CODE_MARKER)
        assert imported_modules(source) <= ALLOWED_IMPORTS, imported_modules(source) - ALLOWED_IMPORTS
    # The pipeline file carries the modules the class imports (one file: diffusers fetches no others from a repo).
    assert f"class {CLASSES[kind].__name__}(" in shipped[0].read_text()
    assert sorted(p.name for p in folder.glob("*.py")) == sorted([f"{stem}.py", "app.py"])  # app.py: test_demo.py
    weights = [p for p in folder.rglob("*") if p.suffix in (".safetensors", ".bin", ".pt", ".ckpt")]
    assert weights and all(p.suffix == ".safetensors" for p in weights)


def test_sculpt_loads_portable_folders_with_its_own_code(folders, sculpt_images):
    components = make_components()
    for kind, cls in CLASSES.items():
        loaded = cls.from_pretrained(folders[kind])  # no trust_remote_code: nothing from the folder runs
        assert type(loaded) is cls and type(loaded.scheduler) is DDPMScheduler
        fresh = generate(cls(**components), **image_inputs().get(kind, {}))
        np.testing.assert_array_equal(sculpt_images[kind], fresh)
    # As before, a folder loads as any of the three classes (they share components).
    assert type(LatentDiffusionInpaintPipeline.from_pretrained(folders["t2i"])) is LatentDiffusionInpaintPipeline


def test_diffusion_pipeline_refuses_without_trust_remote_code_and_loads_with_it(folders, sculpt_images):
    with pytest.raises(ValueError, match=r"(?s)custom code in pipeline_latent_diffusion\.py.*trust_remote_code=True"):
        DiffusionPipeline.from_pretrained(folders["t2i"])
    remote = DiffusionPipeline.from_pretrained(folders["t2i"], trust_remote_code=True)  # sculpt installed: no clash
    assert type(remote).__module__ == "diffusers_modules.local.pipeline_latent_diffusion"
    assert type(remote.scheduler).__module__ == "diffusers_modules.local.scheduling_ddpm"
    np.testing.assert_array_equal(generate(remote), sculpt_images["t2i"])


def test_scheduler_swap_and_save_keeps_the_folder_loadable(folders, tmp_path):
    index = json.loads((folders["dpm"] / "model_index.json").read_text())
    assert index["scheduler"] == ["diffusers", "DPMSolverMultistepScheduler"]
    assert not list((folders["dpm"] / "scheduler").glob("*.py"))
    loaded = LatentDiffusionPipeline.from_pretrained(folders["dpm"])
    assert type(loaded.scheduler) is DPMSolverMultistepScheduler
    # Swapped and saved into the folder it came from: our scheduler's stale copy goes, and back again.
    folder = tmp_path / "in_place"
    LatentDiffusionPipeline.from_pretrained(folders["t2i"]).save_pretrained(folder)
    loaded = LatentDiffusionPipeline.from_pretrained(folder)
    loaded.scheduler = DPMSolverMultistepScheduler.from_config(loaded.scheduler.config)
    loaded.save_pretrained(folder)
    assert not list((folder / "scheduler").glob("*.py"))
    assert type(LatentDiffusionPipeline.from_pretrained(folder).scheduler) is DPMSolverMultistepScheduler
    loaded.scheduler = DDPMScheduler.from_config(loaded.scheduler.config)
    loaded.save_pretrained(folder)
    assert [p.name for p in (folder / "scheduler").glob("*.py")] == ["scheduling_ddpm.py"]


def test_folders_saved_before_portability_still_load_and_are_refused_for_push(folders, tmp_path):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(folders["t2i"], old)
    index = json.loads((old / "model_index.json").read_text())
    index.update(_class_name="LatentDiffusionPipeline", scheduler=["pipelines.scheduling_ddpm", "DDPMScheduler"])
    (old / "model_index.json").write_text(json.dumps(index))
    (old / "pipeline_latent_diffusion.py").unlink()
    assert type(LatentDiffusionPipeline.from_pretrained(old).scheduler) is DDPMScheduler
    with pytest.raises(ValueError, match=r"does not carry its pipeline code .*re-save it with"):
        sharing.pipeline_files(old)


def test_folders_load_where_sculpt_is_not_installed(folders, sculpt_images, tmp_path):
    """Offline, without sculpt: the three pipelines and the DPM-Solver folder load with trust_remote_code=True and
    generate what sculpt's classes generate; refusal without it; a pipeline loaded through remote code saves a
    portable folder again, also after swapping its scheduler there."""
    work = tmp_path / "work"
    work.mkdir()
    inputs = image_inputs()
    np.save(work / "image.npy", inputs["img2img"]["image"])
    np.save(work / "mask.npy", inputs["inpaint"]["mask_image"])
    body = f'''
    import json, sys
    import numpy as np, torch
    from diffusers import DiffusionPipeline, DPMSolverMultistepScheduler
    args = json.loads(sys.argv[1])
    results, arrays = {{}}, {{}}
    def generate(pipe, **kwargs):
        pipe.set_progress_bar_config(disable=True)
        return pipe({PROMPT!r}, num_inference_steps={STEPS}, output_type="np",
                    generator=torch.Generator().manual_seed(0), **kwargs).images
    try:
        DiffusionPipeline.from_pretrained(args["t2i"])
    except ValueError as error:
        results["refusal"] = str(error)
    image, mask = np.load("image.npy"), np.load("mask.npy")
    kwargs = {{"img2img": {{"image": image, "strength": 0.7}}, "inpaint": {{"image": image, "mask_image": mask}}}}
    for kind in ("t2i", "img2img", "inpaint", "dpm"):
        pipe = DiffusionPipeline.from_pretrained(args[kind], trust_remote_code=True)
        results[kind] = [type(pipe).__module__, type(pipe).__name__, type(pipe.scheduler).__name__]
        arrays[kind] = generate(pipe, **kwargs.get(kind, {{}}))
    pipe = DiffusionPipeline.from_pretrained(args["t2i"], trust_remote_code=True)
    pipe.save_pretrained(args["resaved"])
    arrays["resaved"] = generate(DiffusionPipeline.from_pretrained(args["resaved"], trust_remote_code=True))
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    pipe.save_pretrained(args["swapped_here"])
    arrays["swapped_here"] = generate(DiffusionPipeline.from_pretrained(args["swapped_here"], trust_remote_code=True))
    np.savez("arrays.npz", **arrays)
    json.dump(results, open("results.json", "w"))
    '''
    args = {kind: str(path) for kind, path in folders.items()}
    args |= {"resaved": str(tmp_path / "resaved"), "swapped_here": str(tmp_path / "swapped_here")}
    results = run_without_sculpt(body, args, hub_env(None, tmp_path / "hf", HF_HUB_OFFLINE="1"), work)
    arrays = np.load(work / "arrays.npz")

    assert "trust_remote_code=True" in results["refusal"]
    for kind, cls in CLASSES.items():
        assert results[kind][0].startswith("diffusers_modules.") and results[kind][1] == cls.__name__
    assert results["dpm"][2] == "DPMSolverMultistepScheduler"
    for kind in ("t2i", "img2img", "inpaint", "dpm"):
        np.testing.assert_array_equal(arrays[kind], sculpt_images[kind])

    # diffusers saved the remote classes under `diffusers_modules.local.*`; the folder names the shipped files again.
    resaved = tmp_path / "resaved"
    index = json.loads((resaved / "model_index.json").read_text())
    assert "diffusers_modules" not in json.dumps(index)
    assert index["_class_name"] == ["pipeline_latent_diffusion", "LatentDiffusionPipeline"]
    assert index["scheduler"] == ["scheduling_ddpm", "DDPMScheduler"]
    for name in ("pipeline_latent_diffusion.py", "scheduler/scheduling_ddpm.py"):
        assert (resaved / name).read_bytes() == (folders["t2i"] / name).read_bytes()
    np.testing.assert_array_equal(arrays["resaved"], arrays["t2i"])
    assert type(LatentDiffusionPipeline.from_pretrained(resaved).scheduler) is DDPMScheduler
    swapped = json.loads((tmp_path / "swapped_here" / "model_index.json").read_text())
    assert swapped["scheduler"] == ["diffusers", "DPMSolverMultistepScheduler"]
    np.testing.assert_array_equal(arrays["swapped_here"], arrays["dpm"])


# ---------------------------------------------------------------------------------------------------------------------
# Training from pretrained parts and data given by path, the model card
# ---------------------------------------------------------------------------------------------------------------------
def stable_diffusion_folder(path: Path) -> Path:
    """The tiny components in Stable Diffusion 1.x's layout, written by diffusers' own pipeline (PNDM, as SD ships)."""
    components = make_components()
    components["scheduler"] = PNDMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                            skip_prk_steps=True, steps_offset=1)
    StableDiffusionPipeline(**components, safety_checker=None, feature_extractor=None,
                            requires_safety_checker=False).save_pretrained(path)
    return path


def tiny_run(output_dir: Path, *overrides: str):
    return load_config(TINY, [f"output_dir={output_dir}", "validation_steps=null", "max_train_steps=2",
                              "num_inference_steps=2", "num_shapes_samples=8", *overrides])


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, object]:
    """Two steps from a local SD-format folder on a local imagefolder, the way users point the config at them."""
    root = tmp_path_factory.mktemp("trained")
    sd = stable_diffusion_folder(root / "tiny-sd")
    write_imagefolder(make_shapes_dataset(8, 32, seed=0), root / "images")
    config = tiny_run(root / "run", f"pretrained_model_name_or_path={sd}", "dataset_name=null",
                      f"train_data_dir={root / 'images'}", "checkpointing_steps=1", "model_license=apache-2.0")
    main(config)
    return root / "run", config


def test_training_from_a_local_sd_folder_and_imagefolder(trained):
    output_dir, config = trained
    sd = Path(config.pretrained_model_name_or_path)
    unet = json.loads((output_dir / "unet" / "config.json").read_text())
    assert unet["block_out_channels"] == [8, 16]  # the SD folder's UNet, not tiny.yaml's unet_config
    trained_vocab = json.loads((output_dir / "tokenizer" / "tokenizer.json").read_text())["model"]["vocab"]
    assert trained_vocab == json.loads((sd / "tokenizer" / "tokenizer.json").read_text())["model"]["vocab"]
    pipe = LatentDiffusionPipeline.from_pretrained(output_dir)
    assert generate(pipe).shape == (1, 32, 32, 3)
    assert json.loads((output_dir / "model_index.json").read_text())["_class_name"][0] == "pipeline_latent_diffusion"


def card_of(path: Path) -> tuple[dict, str]:
    _, metadata, body = path.read_text().split("---", 2)
    return yaml.safe_load(metadata), body


def test_model_card_of_a_training_run(trained):
    output_dir, config = trained
    metadata, body = card_of(output_dir / "README.md")
    assert metadata["library_name"] == "diffusers" and metadata["pipeline_tag"] == "text-to-image"
    assert metadata["license"] == "apache-2.0"
    assert {"text-to-image", "diffusers", "sculpt"} <= set(metadata["tags"])
    assert "base_model" not in metadata and "datasets" not in metadata  # local parts and data are not Hub ids
    assert [w["text"] for w in metadata["widget"]] == config.validation_prompts
    for item in metadata["widget"]:
        assert (output_dir / item["output"]["url"]).is_file()
    assert "![validation images](samples.png)" in body and (output_dir / "samples.png").is_file()
    assert f'DiffusionPipeline.from_pretrained("{output_dir.resolve()}", trust_remote_code=True)' in body
    for row in ("| steps | 2 |", "| resolution | 32 px |", "lr 0.001", "caption dropout 0.1", "| seed | 0 |",
                "4 per process × 1 process(es) × 1 accumulation step(s) = 4", "final loss"):
        assert row in body, row
    assert "trained from local pretrained parts" in body
    assert "It generates 32×32 images" in body and "It trained for 2 steps only" in body
    assert "tokenizer was learned" not in body and "autoencoder was not trained" not in body  # pretrained parts
    assert "no safety checker" in body


def test_model_card_says_what_a_from_scratch_shapes_model_cannot_do(trained):
    output_dir, _ = trained
    config = tiny_run(output_dir, "hub_model_id=alice/x")
    _, body = card_of_text(sharing.build_model_card(output_dir, config, "alice/x"))
    assert "knows only the captions of the shapes dataset" in body
    assert "tokenizer was learned from the training captions" in body
    assert "autoencoder was not trained" in body and "trained from scratch" in body
    assert 'from_pretrained("alice/x", trust_remote_code=True)' in body
    bare = str(sharing.build_model_card(output_dir))  # a folder with no training record
    assert "no validation images" in bare and "library_name: diffusers" in bare


def card_of_text(card) -> tuple[dict, str]:
    _, metadata, body = str(card).split("---", 2)
    return yaml.safe_load(metadata), body


# ---------------------------------------------------------------------------------------------------------------------
# Pushing
# ---------------------------------------------------------------------------------------------------------------------
def test_push_uploads_the_portable_folder_with_its_card_and_skips_the_rest(trained, hub_client):
    output_dir, _ = trained
    (output_dir / "logs").mkdir(exist_ok=True)
    (output_dir / "logs" / "events.out").write_text("x")
    (output_dir / "unet" / "diffusion_pytorch_model.safetensors.tmp").write_text("partial")
    before = snapshot(output_dir)
    url = sharing.push_folder(output_dir, "sculpt-org/tiny", endpoint=hub_client.url)
    assert url.startswith(f"{hub_client.url}/sculpt-org/tiny/commit/")
    assert snapshot(output_dir) == before
    files = hub_client.files("sculpt-org/tiny")
    assert not [f for f in files if f.startswith(("checkpoint-", "logs/", "validation/")) or f.endswith(".tmp")]
    for name in ("model_index.json", "pipeline_latent_diffusion.py", "scheduler/scheduling_ddpm.py",
                 "unet/diffusion_pytorch_model.safetensors", "config.yaml", "samples.png", "samples/000.png"):
        assert files[name] == (output_dir / name).read_bytes(), name
    # Weights went through the LFS batch API and a PUT, not inside the commit.
    assert {"unet/diffusion_pytorch_model.safetensors", "samples.png"} <= hub_client.lfs_files("sculpt-org/tiny")
    assert ("POST", "/sculpt-org/tiny.git/info/lfs/objects/batch") in hub_client.requests
    # The card on the Hub loads the repo; the local one is untouched.
    assert 'DiffusionPipeline.from_pretrained("sculpt-org/tiny", trust_remote_code=True)' in files["README.md"].decode()
    assert files["README.md"] != (output_dir / "README.md").read_bytes()


def test_create_repo_exist_ok_hides_a_foreign_repo_so_push_checks_the_namespace(folders, hub_client):
    from huggingface_hub import HfApi

    # The client behaviour worked around: 403 on create, then repo_info finds the public repo, and no error.
    assert HfApi(endpoint=hub_client.url).create_repo("bob/taken", exist_ok=True).repo_id == "bob/taken"
    before = hub_client.files("bob/taken")
    with pytest.raises(ValueError, match=r"'bob/taken' belongs to 'bob', where 'alice' cannot write"):
        sharing.push_folder(folders["t2i"], "bob/taken", endpoint=hub_client.url)
    with pytest.raises(ValueError, match=r"belongs to 'readers'"):  # an organization where alice only reads
        sharing.push_folder(folders["t2i"], "readers/model", endpoint=hub_client.url)
    assert hub_client.files("bob/taken") == before


@pytest.mark.parametrize(
    "setup,error,match",
    [
        ("no_token", ValueError, r"No Hugging Face token found.*hf auth login.*HF_TOKEN"),
        ("read_only", ValueError, r"token of 'alice' is read-only"),
        ("bad_token", sharing.PushError, r"rejected the token \(401"),
        ("server_down", sharing.PushError, r"cannot reach http://127\.0\.0\.1:\d+ \(ConnectError"),
        ("offline", sharing.PushError, r"offline mode is on \(HF_HUB_OFFLINE=1\)"),
        ("not_a_pipeline", ValueError, r"has no model_index\.json, so it is not a pipeline folder"),
        ("bad_repo_id", ValueError, r"`repo_id`: 'a/b/c' is not a Hub repo id"),
    ],
)
def test_push_errors_are_one_line_and_leave_the_folder_untouched(folders, hub_client, monkeypatch, tmp_path, setup,
                                                                  error, match):
    from huggingface_hub import constants

    folder, repo_id, endpoint = folders["t2i"], "alice/errors", hub_client.url
    if setup == "no_token":
        monkeypatch.delenv("HF_TOKEN")
    elif setup == "read_only":
        monkeypatch.setenv("HF_TOKEN", READ_ONLY)
    elif setup == "bad_token":
        monkeypatch.setenv("HF_TOKEN", "hf_unknown")
    elif setup == "server_down":
        with HubServer({}) as gone:
            endpoint = gone.url  # a port nothing listens on any more
    elif setup == "offline":
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    elif setup == "not_a_pipeline":
        folder = tmp_path
    elif setup == "bad_repo_id":
        repo_id = "a/b/c"
    before = snapshot(folder)
    with pytest.raises(error, match=match) as caught:
        sharing.push_folder(folder, repo_id, endpoint=endpoint)
    assert "\n" not in str(caught.value)
    assert snapshot(folder) == before
    assert ("model", "alice/errors") not in hub_client.repos


def load_push_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("push_to_hub_cli", ROOT / "scripts" / "push_to_hub.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_push_script(folders, hub_client, capsys, monkeypatch, tmp_path):
    from huggingface_hub import constants

    script = load_push_script()
    assert script.main([str(folders["inpaint"]), "alice/inpaint", "--private"]) == 0
    assert capsys.readouterr().out.strip().startswith(f"{hub_client.url}/alice/inpaint/commit/")
    assert hub_client.repos[("model", "alice/inpaint")].private
    readme = hub_client.files("alice/inpaint")["README.md"].decode()  # no card in the folder: one is made
    assert 'from_pretrained("alice/inpaint", trust_remote_code=True)' in readme
    assert "pipeline_tag: text-to-image" in readme

    assert script.main([str(tmp_path), "alice/x"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert script.main([str(folders["t2i"]), "alice/x"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("push_to_hub.py: error: ") and err.count("\n") == 1 and "offline" in err


def test_pipeline_push_to_hub_uploads_a_portable_folder(folders, hub_client, tmp_path):
    pipe = LatentDiffusionPipeline.from_pretrained(folders["t2i"])
    pipe.save_pretrained(tmp_path / "pushed", push_to_hub=True, repo_id="alice/via-save")
    pipe.push_to_hub("alice/via-push")
    for repo_id in ("alice/via-save", "alice/via-push"):
        files = hub_client.files(repo_id)
        assert json.loads(files["model_index.json"])["_class_name"] == ["pipeline_latent_diffusion",
                                                                       "LatentDiffusionPipeline"]
        assert files["scheduler/scheduling_ddpm.py"] == (folders["t2i"] / "scheduler/scheduling_ddpm.py").read_bytes()
        assert "trust_remote_code=True" in files["README.md"].decode()


def test_sculpt_loads_a_pushed_repo_by_id_with_its_own_code(folders, sculpt_images, hub_client, tmp_path):
    sharing.push_folder(folders["t2i"], "alice/for-sculpt", endpoint=hub_client.url)
    pipe = LatentDiffusionPipeline.from_pretrained("alice/for-sculpt", cache_dir=tmp_path)  # no trust_remote_code
    assert type(pipe) is LatentDiffusionPipeline and type(pipe.scheduler) is DDPMScheduler
    np.testing.assert_array_equal(generate(pipe), sculpt_images["t2i"])


def test_push_config_is_checked_before_training(tmp_path, hub_client, monkeypatch):
    config = tiny_run(tmp_path / "run", "push_to_hub=true", "hub_model_id=bob/mine")
    with pytest.raises(ValueError, match=r"'bob/mine' belongs to 'bob'"):
        main(config)
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(ValueError, match=r"No Hugging Face token found"):
        main(tiny_run(tmp_path / "run", "push_to_hub=true", "hub_model_id=alice/mine"))
    assert not (tmp_path / "run").exists()  # nothing trained, nothing written


def test_a_push_that_fails_after_training_keeps_the_trained_folder(tmp_path, hub_client):
    config = tiny_run(tmp_path / "run", "push_to_hub=true", "hub_model_id=alice/refused", "max_train_steps=1",
                      "validation_prompts=[]", "checkpointing_steps=null")
    hub_client.refuse_commits = 500
    try:
        with pytest.raises(sharing.PushError, match=r"answered 500: .*The folder is unchanged; push it again with: "
                                                    r"python scripts/push_to_hub.py .*run alice/refused$"):
            main(config)
    finally:
        hub_client.refuse_commits = None
    folder = tmp_path / "run"
    assert (folder / "README.md").is_file() and (folder / "pipeline_latent_diffusion.py").is_file()
    assert type(LatentDiffusionPipeline.from_pretrained(folder)) is LatentDiffusionPipeline
    assert hub_client.files("alice/refused").keys() == {".gitattributes"}  # the repo was made, nothing landed


@pytest.mark.parametrize(
    "override,match",
    [
        ("hub_model_id=a/b/c", r"`hub_model_id`: 'a/b/c' is not a Hub repo id"),
        ("hub_model_id=user/x--y", r"`hub_model_id`: 'user/x--y' is not a Hub repo id"),
        ("model_license=Apache 2.0", r"`model_license`: 'Apache 2.0' is not a Hub license id"),
        ("hub_private=perhaps", r"`hub_private`: 'perhaps' is not a valid bool"),
    ],
)
def test_sharing_config_keys_are_checked(override, match):
    with pytest.raises(ValueError, match=match):
        load_config(TINY, [override])


# ---------------------------------------------------------------------------------------------------------------------
# The whole way: Hub model and Hub dataset → train → push → a machine without sculpt
# ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pushed_run(hub, tmp_path_factory) -> Path:
    """`scripts/train.py` in a fresh process, its model parts and data given by Hub id, pushing at the end."""
    root = tmp_path_factory.mktemp("pushed")
    sd = stable_diffusion_folder(root / "tiny-sd")
    hub.add_repo("alice/tiny-sd", {p.relative_to(sd).as_posix(): p.read_bytes() for p in sd.rglob("*") if p.is_file()})
    data = make_shapes_dataset(8, 32, seed=1).rename_column("text", "caption").select_columns(["image", "caption"])
    parquet = io.BytesIO()
    data.to_parquet(parquet)
    hub.add_repo("alice/shapes-parquet", {"data/train-00000-of-00001.parquet": parquet.getvalue()}, repo_type="dataset")

    output_dir = root / "run"
    overrides = [f"output_dir={output_dir}", "validation_steps=null", "max_train_steps=2", "num_inference_steps=2",
                 "checkpointing_steps=1", "report_to=tensorboard", "pretrained_model_name_or_path=alice/tiny-sd",
                 "dataset_name=alice/shapes-parquet", "push_to_hub=true", "hub_model_id=alice/sculpt-tiny"]
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "train.py"), "--config", TINY, *overrides],
                            cwd=root, env=hub_env(hub, root / "hf"), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Pushed it to" in result.stdout
    return output_dir


def test_training_by_hub_ids_pushes_a_card_with_base_model_and_dataset(hub, pushed_run):
    files = hub.files("alice/sculpt-tiny")
    assert not [f for f in files if f.startswith(("checkpoint-", "logs/"))]
    assert (pushed_run / "checkpoint-2").is_dir() and (pushed_run / "logs").is_dir()
    for name, content in files.items():
        if name not in ("README.md", ".gitattributes"):
            assert content == (pushed_run / name).read_bytes(), name
    metadata, body = card_of_text(files["README.md"].decode())
    assert metadata["base_model"] == "alice/tiny-sd" and metadata["datasets"] == ["alice/shapes-parquet"]
    assert "fine-tuned from `alice/tiny-sd`" in body
    sd_unet = json.loads(hub.files("alice/tiny-sd")["unet/config.json"])
    assert json.loads(files["unet/config.json"])["block_out_channels"] == sd_unet["block_out_channels"]


def test_pushed_model_loads_without_sculpt_and_generates_the_same_images(hub, pushed_run, tmp_path):
    """The issue's "done when": download in a fresh process without sculpt, DiffusionPipeline.from_pretrained(...,
    trust_remote_code=True), identical images; the card's snippet runs as written; and the pipeline loaded there
    pushes a portable repo again."""
    readme = hub.files("alice/sculpt-tiny")["README.md"].decode()
    snippet = re.search(r"<!-- sculpt:usage -->\n```python\n(.*?)```", readme, re.DOTALL)[1]
    body = f'''
    import json, sys
    import numpy as np, torch
    from diffusers import DiffusionPipeline
    args = json.loads(sys.argv[1])
    results = {{}}
    try:
        DiffusionPipeline.from_pretrained(args["repo_id"])
    except ValueError as error:
        results["refusal"] = str(error)
    pipe = DiffusionPipeline.from_pretrained(args["repo_id"], trust_remote_code=True)
    pipe.set_progress_bar_config(disable=True)
    results["class"] = type(pipe).__module__
    images = pipe({PROMPT!r}, num_inference_steps={STEPS}, output_type="np",
                  generator=torch.Generator().manual_seed(0)).images
    np.save("images.npy", images)
    exec(args["snippet"], {{}})
    pipe.push_to_hub("alice/from-remote")  # the remote-code class pushes a portable folder too
    json.dump(results, open("results.json", "w"))
    '''
    results = run_without_sculpt(body, {"repo_id": "alice/sculpt-tiny", "snippet": snippet},
                                 hub_env(hub, tmp_path / "hf"), tmp_path)
    assert "trust_remote_code=True" in results["refusal"]
    assert results["class"].startswith("diffusers_modules.")
    ours = generate(LatentDiffusionPipeline.from_pretrained(pushed_run))
    np.testing.assert_array_equal(np.load(tmp_path / "images.npy"), ours)
    import PIL.Image

    assert PIL.Image.open(tmp_path / "sample.png").size == (32, 32)
    again = hub.files("alice/from-remote")
    assert "diffusers_modules" not in again["model_index.json"].decode()
    for name in ("pipeline_latent_diffusion.py", "scheduler/scheduling_ddpm.py"):
        assert again[name] == (pushed_run / name).read_bytes()
    assert "trust_remote_code=True" in again["README.md"].decode()


# ---------------------------------------------------------------------------------------------------------------------
# A LoRA run: from an SD-format base, pushed as the adapter and its card, loaded back from the Hub
# ---------------------------------------------------------------------------------------------------------------------
def test_a_lora_run_on_an_sd_folder_pushes_the_adapter_and_its_card(tmp_path, hub_client):
    pytest.importorskip("peft", reason="training_mode lora needs peft: pip install -e '.[lora]'")
    sd = stable_diffusion_folder(tmp_path / "tiny-sd")
    (sd / "README.md").write_text("---\nlicense: creativeml-openrail-m\n---\n# a tiny SD\n")
    config = tiny_run(tmp_path / "run", f"pretrained_model_name_or_path={sd}", "training_mode=lora",
                      "train_text_encoder=false", "validation_prompts=[a large red circle on a white background]",
                      "instance_prompt=a sks shape", "max_train_steps=3")  # fmt: skip
    main(config)
    run = tmp_path / "run"
    card = (run / "README.md").read_text()
    assert "license: creativeml-openrail-m" in card and "creativeml-openrail-m (the base model's)" in card
    assert "trigger words: `sks`" in card and f'DiffusionPipeline.from_pretrained("{sd}")' in card  # SD: no remote code
    before = snapshot(run)
    sharing.push_folder(run, "sculpt-org/tiny-lora", endpoint=hub_client.url)
    assert snapshot(run) == before
    files = hub_client.files("sculpt-org/tiny-lora")
    assert files["pytorch_lora_weights.safetensors"] == (run / "pytorch_lora_weights.safetensors").read_bytes()
    assert not [f for f in files if f.startswith(("checkpoint-", "logs/", "unet/"))]
    assert 'pipe.load_lora_weights("sculpt-org/tiny-lora")' in files["README.md"].decode()
    # Loaded by Hub id into diffusers' own pipeline and into sculpt's: the same images.
    expected = StableDiffusionPipeline.from_pretrained(sd)
    expected.load_lora_weights(run)
    parts = ("vae", "text_encoder", "tokenizer", "unet", "scheduler")
    for pipe in (StableDiffusionPipeline.from_pretrained(sd), LatentDiffusionPipeline(
            **{k: v for k, v in StableDiffusionPipeline.from_pretrained(sd).components.items() if k in parts})):
        pipe.load_lora_weights("sculpt-org/tiny-lora", weight_name="pytorch_lora_weights.safetensors")
        np.testing.assert_allclose(generate(pipe), generate(expected), atol=1e-6)
