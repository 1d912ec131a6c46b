"""pipelines/loading.py: the one rule for "Hub id or local path?" and for "pickle-only weights?", which the pipelines,
training's pretrained parts, checkpoints and the Hub push all use (tests/test_safe_loading.py checks each of them
refuses what this rule flags)."""

from __future__ import annotations

import pytest

from pipelines.loading import (
    PICKLE_SUFFIXES,
    SAFE_SUFFIXES,
    folder_pickle_only,
    is_hub_id,
    is_repo_id,
    looks_like_path,
    pickle_only,
    weight_variant,
)


@pytest.mark.parametrize(
    "name, variant",
    [
        ("diffusion_pytorch_model.safetensors", None),
        ("diffusion_pytorch_model.fp16.safetensors", "fp16"),
        ("model-00001-of-00002.safetensors", None),
        ("diffusion_pytorch_model.safetensors.index.json", None),
        ("diffusion_pytorch_model.fp16.bin.index.json", "fp16"),
        ("pytorch_model.bin", None),
        ("random_states_0.pkl", None),
        ("config.json", None),
    ],
)
def test_weight_variant(name, variant):
    assert weight_variant(name) == variant


def test_pickle_only_per_format_and_variant():
    assert pickle_only(["diffusion_pytorch_model.bin"]) == ["diffusion_pytorch_model.bin"]
    assert pickle_only(["diffusion_pytorch_model.bin", "diffusion_pytorch_model.safetensors"]) == []
    # A safetensors file of another variant does not cover the pickle a loader would read for this one.
    names = ["diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.bin"]
    assert pickle_only(names) == ["diffusion_pytorch_model.bin"]
    assert pickle_only(names, variant="fp16") == []
    assert pickle_only(["config.json"]) == []
    # Every pickle format counts, safetensors' index files count as safetensors.
    for suffix in PICKLE_SUFFIXES:
        assert pickle_only([f"model{suffix}"]) == [f"model{suffix}"]
    for suffix in SAFE_SUFFIXES:
        assert pickle_only([f"model{suffix}", "model.bin"]) == []


def test_folder_pickle_only(tmp_path):
    assert folder_pickle_only(tmp_path / "missing") == []
    (tmp_path / "diffusion_pytorch_model.bin").write_bytes(b"")
    (tmp_path / "config.json").write_text("{}")
    assert folder_pickle_only(tmp_path) == ["diffusion_pytorch_model.bin"]
    (tmp_path / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    assert folder_pickle_only(tmp_path) == []


@pytest.mark.parametrize(
    "value, path_only",
    [("org/name", False), ("name", False), ("./name", True), ("/abs/path", True), ("~/model", True),
     ("a/b/c", True), ("bad name!", True), ("org--x/y", True)],
)  # fmt: skip
def test_looks_like_path(value, path_only):
    assert looks_like_path(value) is path_only
    assert is_repo_id(value) is not path_only or value.startswith((".", "/", "~"))


def test_is_hub_id_prefers_an_existing_local_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert is_hub_id("org/name") and not is_hub_id(None) and not is_hub_id("")
    (tmp_path / "org" / "name").mkdir(parents=True)
    assert not is_hub_id("org/name")  # from_pretrained reads an existing relative path as a local folder
