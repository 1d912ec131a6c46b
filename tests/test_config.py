"""training/config.py: precedence, string parsing, error messages, cross-field checks, round trip, shipped configs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from training.config import TrainConfig, config_to_dict, load_config, save_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SHAPES = ["dataset_name=shapes"]


def write_yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


# ---- precedence --------------------------------------------------------------------------------------------------


def test_defaults_build_a_valid_config():
    config = load_config(None, SHAPES)
    assert config == TrainConfig(dataset_name="shapes")
    assert config.learning_rate == 1e-4 and config.mixed_precision == "no" and config.validation_prompts == []


def test_defaults_lt_yaml_lt_overrides(tmp_path):
    path = write_yaml(tmp_path, "dataset_name: shapes\nlearning_rate: 2e-4\nseed: 7\noutput_dir: from-yaml\n")
    config = load_config(path, ["seed=8", "--train_batch_size=3"])
    assert config.learning_rate == 2e-4  # YAML over default
    assert config.seed == 8  # override over YAML
    assert config.train_batch_size == 3  # override over default, leading -- allowed
    assert config.output_dir == "from-yaml"
    assert config.adam_beta1 == 0.9  # untouched default


def test_later_override_wins():
    assert load_config(None, [*SHAPES, "seed=1", "seed=2"]).seed == 2


def test_empty_yaml_file_means_defaults(tmp_path):
    assert load_config(write_yaml(tmp_path, "# nothing\n"), SHAPES) == TrainConfig(dataset_name="shapes")


# ---- parsing strings to field types -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override, key, expected",
    [
        ("train_batch_size=12", "train_batch_size", 12),
        ("max_train_steps=1_000", "max_train_steps", 1000),
        ("learning_rate=3e-4", "learning_rate", 3e-4),
        ("learning_rate=1", "learning_rate", 1.0),
        ("noise_offset=0.05", "noise_offset", 0.05),
        ("output_dir=runs/a b", "output_dir", "runs/a b"),
        ("report_to=none", "report_to", "none"),  # a plain str keeps "none"
        ("hub_model_id=none", "hub_model_id", None),
        ("pretrained_vae=NULL", "pretrained_vae", None),
        ("snr_gamma=5", "snr_gamma", 5.0),
        ("snr_gamma=null", "snr_gamma", None),
        ("checkpointing_steps=none", "checkpointing_steps", None),
        ("validation_seed=3", "validation_seed", 3),
        ("validation_prompts=[a red circle, 'b, c']", "validation_prompts", ["a red circle", "b, c"]),
        ("validation_prompts=[yes, 1]", "validation_prompts", ["yes", "1"]),  # list[str] keeps strings
        ("validation_prompts=one,two , three", "validation_prompts", ["one", "two", "three"]),
        ("validation_prompts=", "validation_prompts", []),
        ("scheduler_config={num_train_timesteps: 500, beta_schedule: linear}", "scheduler_config",
         {"num_train_timesteps": 500, "beta_schedule": "linear"}),
        ("eval_guidance_scales=[1, 2.5]", "eval_guidance_scales", [1.0, 2.5]),  # list[float]: numbers, as floats
        ("eval_guidance_scales=0,1e1", "eval_guidance_scales", [0.0, 10.0]),
        ("eval_steps=none", "eval_steps", None),
        ("allow_pickle=yes", "allow_pickle", True),
    ],
)
def test_override_parsing(override, key, expected):
    value = getattr(load_config(None, [*SHAPES, override]), key)
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize("text, expected", [(t, True) for t in ("true", "True", "1", "yes", "YES", "on")]
                         + [(f, False) for f in ("false", "FALSE", "0", "no", "off")])
def test_bool_parsing(text, expected):
    assert load_config(None, [*SHAPES, f"use_ema={text}"]).use_ema is expected


def test_dotted_override_sets_one_dict_entry():
    config = load_config(None, [*SHAPES, "unet_config.block_out_channels=[32,64]", "unet_config.attention_head_dim=4",
                                "scheduler_config.clip_sample=true", "vae_config.extra.depth=2",
                                "vae_config.force_upcast=none"])
    assert config.unet_config["block_out_channels"] == [32, 64]
    assert config.unet_config["attention_head_dim"] == 4
    assert config.unet_config["layers_per_block"] == 2  # the rest of the default dict is kept
    assert config.scheduler_config["clip_sample"] is True
    assert config.vae_config["extra"] == {"depth": 2}
    assert config.vae_config["force_upcast"] is None
    assert TrainConfig(dataset_name="shapes").unet_config["block_out_channels"] == [64, 128, 256]  # no aliasing


def test_dotted_override_applies_on_top_of_yaml_dict(tmp_path):
    path = write_yaml(tmp_path, "dataset_name: shapes\nscheduler_config: {num_train_timesteps: 100}\n")
    config = load_config(path, ["scheduler_config.beta_schedule=linear"])
    assert config.scheduler_config == {"num_train_timesteps": 100, "beta_schedule": "linear"}  # YAML dict replaced


def test_yaml_scalars_follow_yaml_1_2(tmp_path):
    path = write_yaml(tmp_path, "dataset_name: shapes\nmixed_precision: no\nlearning_rate: 1e-4\nuse_ema: yes\n"
                                "hub_model_id: none\nadam_epsilon: 1.0e-8\n")
    config = load_config(path, [])
    assert config.mixed_precision == "no"  # PyYAML's YAML 1.1 would read False
    assert config.learning_rate == 1e-4  # YAML 1.1 would read the string "1e-4"
    assert config.use_ema is True and config.hub_model_id is None and config.adam_epsilon == 1e-8


# ---- key and type errors ------------------------------------------------------------------------------------------


def test_unknown_override_key_suggests_the_closest():
    with pytest.raises(ValueError, match=r"Unknown config key `learnig_rate`\. Did you mean `learning_rate`\?"
                                         r" Allowed keys: output_dir, .*kl_weight\."):
        load_config(None, [*SHAPES, "learnig_rate=1e-4"])


def test_unknown_yaml_key_names_the_file(tmp_path):
    path = write_yaml(tmp_path, "dataset_name: shapes\ntrain_batchsize: 4\n")
    with pytest.raises(ValueError, match=r"Unknown config key `train_batchsize` \(in .*config\.yaml\)\. "
                                         r"Did you mean `train_batch_size`\?"):
        load_config(path, [])


def test_unknown_key_without_close_match():
    with pytest.raises(ValueError, match=r"Unknown config key `zzzz`\. Allowed keys:"):
        load_config(None, ["zzzz=1"])


@pytest.mark.parametrize(
    "override, match",
    [
        ("learning_rate=fast", r"`learning_rate`: 'fast' is not a valid float\."),
        ("train_batch_size=2.5", r"`train_batch_size`: '2\.5' is not a valid int\."),
        ("use_ema=maybe", r"`use_ema`: 'maybe' is not a valid bool\. Use true/false"),
        ("checkpointing_steps=often", r"`checkpointing_steps`: 'often' is not a valid int \| None\."),
        ("unet_config=[1, 2]", r"`unet_config`: '\[1, 2\]' is not a valid dict\."),
        ("validation_prompts=[a, b", r"`validation_prompts`: '\[a, b' is not a valid list\[str\]"),
    ],
)
def test_wrong_type_in_override(override, match):
    with pytest.raises(ValueError, match=match):
        load_config(None, [*SHAPES, override])


@pytest.mark.parametrize(
    "text, match",
    [
        ("train_batch_size: 2.5", r"`train_batch_size`: 2\.5 is not a valid int\."),
        ("center_crop: 1", r"`center_crop`: 1 is not a valid bool\."),
        ("output_dir: 5", r"`output_dir`: 5 is not a valid str\."),
        ("validation_prompts: [a, 3]", r"`validation_prompts`: \['a', 3\] is not a valid list\[str\]\."),
        ("vae_config: 3", r"`vae_config`: 3 is not a valid dict\."),
        ("seed: null", r"`seed`: None is not a valid int\."),
    ],
)
def test_wrong_type_in_yaml(tmp_path, text, match):
    with pytest.raises(ValueError, match=match):
        load_config(write_yaml(tmp_path, f"dataset_name: shapes\n{text}\n"), [])


def test_list_of_floats_from_yaml_and_its_type_errors(tmp_path):
    assert load_config(write_yaml(tmp_path, "dataset_name: shapes\neval_guidance_scales: [1, 3.5]\n"),
                       []).eval_guidance_scales == [1.0, 3.5]
    with pytest.raises(ValueError, match=r"`eval_guidance_scales`: '1,x' is not a valid list\[float\]\. Use numbers"):
        load_config(None, [*SHAPES, "eval_guidance_scales=1,x"])
    with pytest.raises(ValueError, match=r"`eval_guidance_scales`: \[1, 'x'\] is not a valid list\[float\]\."):
        load_config(write_yaml(tmp_path, "dataset_name: shapes\neval_guidance_scales: [1, x]\n"), [])
    with pytest.raises(ValueError, match=r"`eval_guidance_scales`: \[True\] is not a valid list\[float\]"):
        TrainConfig(dataset_name="shapes", eval_guidance_scales=[True])


def test_wrong_type_in_constructor():
    with pytest.raises(ValueError, match=r"`resolution`: '64' is not a valid int\."):
        TrainConfig(dataset_name="shapes", resolution="64")


def test_malformed_override():
    with pytest.raises(ValueError, match=r"Override 'learning_rate' must look like key=value"):
        load_config(None, [*SHAPES, "learning_rate"])


def test_dotted_override_into_a_non_dict_field():
    with pytest.raises(ValueError, match=r"`learning_rate` is not a dict field; dotted keys go into unet_config"):
        load_config(None, [*SHAPES, "learning_rate.value=1"])


def test_dotted_override_through_a_non_dict_entry():
    with pytest.raises(ValueError, match=r"`unet_config\.sample_size` is not a dict"):
        load_config(None, [*SHAPES, "unet_config.sample_size.x=1"])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"Config file '.*nope\.yaml' does not exist"):
        load_config(tmp_path / "nope.yaml", [])
    with pytest.raises(ValueError, match=r"must hold a mapping of keys to values, got list"):
        load_config(write_yaml(tmp_path, "- a\n- b\n"), [])
    with pytest.raises(ValueError, match=r"is not valid YAML"):
        load_config(write_yaml(tmp_path, "a: [1, 2\n"), [])


# ---- cross-field checks -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["learning_rate=0"], r"`learning_rate`: 0\.0 must be > 0"),
        (["learning_rate=nan"], r"`learning_rate`: nan must be > 0"),
        (["vae_learning_rate=-1"], r"`vae_learning_rate`: -1\.0 must be > 0"),
        (["cfg_dropout=1.5"], r"`cfg_dropout`: 1\.5 must be in \[0, 1\]"),
        (["shapes_backgrounds=[white,navy]"], r"`shapes_backgrounds`: \['white', 'navy'\] must be distinct names"),
        (["shapes_colors=[yellow]", "shapes_backgrounds=[yellow]"], r"`shapes_backgrounds`: 'yellow' is the only"),
        (["cfg_dropout=-0.1"], r"`cfg_dropout`: -0\.1 must be in \[0, 1\]"),
        (["resolution=0"], r"`resolution`: 0 must be > 0"),
        (["resolution=62"], r"`resolution`: 62 must be divisible by the VAE's downsampling factor 4"),
        (["resolution=128"], r"`unet_config\.sample_size`: 16 must be `resolution` / VAE downsampling factor = "
                             r"128 / 4 = 32"),
        (["train_batch_size=0"], r"`train_batch_size`: 0 must be ≥ 1"),
        (["gradient_accumulation_steps=0"], r"`gradient_accumulation_steps`: 0 must be ≥ 1"),
        (["max_train_steps=0"], r"`max_train_steps`: 0 must be ≥ 1"),
        (["num_inference_steps=0"], r"`num_inference_steps`: 0 must be ≥ 1"),
        (["num_inference_steps=2000"], r"`num_inference_steps`: 2000 cannot be larger than "
                                       r"`scheduler_config\.num_train_timesteps`: 1000"),
        (["num_validation_images=0"], r"`num_validation_images`: 0 must be ≥ 1"),
        (["max_consecutive_non_finite=0"], r"`max_consecutive_non_finite`: 0 must be ≥ 1"),
        (["ddp_timeout=0"], r"`ddp_timeout`: 0 must be ≥ 1"),
        (["num_processes=0"], r"`num_processes`: 0 must be ≥ 1, or none"),
        (["num_shapes_samples=0"], r"`num_shapes_samples`: 0 must be ≥ 1"),
        (["vae_max_train_steps=0"], r"`vae_max_train_steps`: 0 must be ≥ 1"),
        (["vae_train_batch_size=0"], r"`vae_train_batch_size`: 0 must be ≥ 1"),
        (["mixed_precision=fp32"], r"`mixed_precision`: 'fp32' is not one of 'no', 'fp16', 'bf16'"),
        (["attention_processor=flash"], r"`attention_processor`: 'flash' is not one of 'sdpa', 'classic'"),
        (["dynamo_backend=max-autotune"], r"`dynamo_backend`: 'max-autotune' is not one of 'no', 'inductor', "
                                          r"'aot_eager', 'eager'"),
        (["prediction_type=eps"], r"`prediction_type`: 'eps' is not one of 'epsilon', 'v_prediction', 'sample'"),
        (["lr_scheduler=cosine_annealing"], r"`lr_scheduler`: 'cosine_annealing' is not one of 'constant', "
                                            r"'constant_with_warmup', 'linear', 'cosine', 'cosine_with_restarts', "
                                            r"'polynomial'"),
        (["lr_warmup_steps=-1"], r"`lr_warmup_steps`: -1 must be ≥ 0"),
        (["lr_warmup_steps=100"], r"`lr_warmup_steps`: 100 has no effect with `lr_scheduler`: 'constant'"),
        (["lr_scheduler=cosine", "lr_warmup_steps=20", "max_train_steps=10"],
         r"`lr_warmup_steps`: 20 cannot be larger than `max_train_steps`: 10"),
        (["checkpointing_steps=0"], r"`checkpointing_steps`: 0 must be ≥ 1, or none"),
        (["checkpoints_total_limit=0"], r"`checkpoints_total_limit`: 0 must be ≥ 1, or none"),
        (["validation_steps=0", "validation_prompts=[a]"], r"`validation_steps`: 0 must be ≥ 1, or none"),
        (["max_train_samples=0"], r"`max_train_samples`: 0 must be ≥ 1, or none"),
        (["snr_gamma=0"], r"`snr_gamma`: 0\.0 must be > 0, or none"),
        (["ema_decay=1"], r"`ema_decay`: 1\.0 must be in \(0, 1\)"),
        (["ema_decay=0"], r"`ema_decay`: 0\.0 must be in \(0, 1\)"),
        (["ema_power=0"], r"`ema_power`: 0\.0 must be > 0"),
        (["ema_inv_gamma=0"], r"`ema_inv_gamma`: 0\.0 must be > 0"),
        (["adam_beta1=1"], r"`adam_beta1`: 1\.0 must be in \[0, 1\)"),
        (["adam_beta2=-0.1"], r"`adam_beta2`: -0\.1 must be in \[0, 1\)"),
        (["adam_epsilon=0"], r"`adam_epsilon`: 0\.0 must be > 0"),
        (["adam_weight_decay=-1"], r"`adam_weight_decay`: -1\.0 must be ≥ 0"),
        (["max_grad_norm=0"], r"`max_grad_norm`: 0\.0 must be > 0"),
        (["noise_offset=-0.1"], r"`noise_offset`: -0\.1 must be ≥ 0"),
        (["kl_weight=-1"], r"`kl_weight`: -1\.0 must be ≥ 0"),
        (["guidance_scale=-1"], r"`guidance_scale`: -1\.0 must be ≥ 0"),
        (["seed=-1"], r"`seed`: -1 must be ≥ 0"),
        (["dataset_seed=-1"], r"`dataset_seed`: -1 must be ≥ 0"),
        (["validation_seed=-1"], r"`validation_seed`: -1 must be ≥ 0, or none"),
        (["dataloader_num_workers=-1"], r"`dataloader_num_workers`: -1 must be ≥ 0"),
        (["tokenizer_vocab_size=100"], r"`tokenizer_vocab_size`: 100 must be ≥ 514"),
        (["non_finite_loss=ignore"], r"`non_finite_loss`: 'ignore' is not one of 'stop', 'skip'"),
        (["on_bad_image=ignore"], r"`on_bad_image`: 'ignore' is not one of 'stop', 'skip'"),
        (["image_interpolation_mode=area"], r"`image_interpolation_mode`: 'area' is not one of 'nearest', 'box', "
                                            r"'bilinear', 'hamming', 'bicubic', 'lanczos'"),
        (["report_to=mlflow"], r"`report_to`: 'mlflow' is not one of 'tensorboard', 'wandb', 'all', 'none'"),
        (["dataset_name=none"], r"Set exactly one data source, `dataset_name` .* got neither"),
        (["train_data_dir=data/x"], r"Set exactly one data source.* got \{'dataset_name': 'shapes', "
                                    r"'train_data_dir': 'data/x'\}"),
        (["push_to_hub=true"], r"`push_to_hub`: true needs `hub_model_id`"),
        (["validation_steps=10"], r"`validation_steps`: 10 needs at least one of `validation_prompts`"),
        (["zero_terminal_snr=true"], r"`zero_terminal_snr`: true needs `prediction_type`: 'v_prediction', got "
                                     r"'epsilon'"),
        (["cache_text_embeddings=true", "train_text_encoder=true"],
         r"`cache_text_embeddings`: true cannot be combined with `train_text_encoder`: true"),
        (["scheduler_config.prediction_type=epsilon"], r"`scheduler_config\.prediction_type`: set the top-level "
                                                       r"`prediction_type` instead"),
        (["scheduler_config.rescale_betas_zero_snr=true"], r"`scheduler_config\.rescale_betas_zero_snr`: set the "
                                                           r"top-level `zero_terminal_snr` instead"),
        (["text_encoder_config.vocab_size=100"], r"`text_encoder_config\.vocab_size`: taken from the tokenizer"),
        (["unet_config.cross_attention_dim=32"], r"`unet_config\.cross_attention_dim`: 32 must equal "
                                                 r"`text_encoder_config\.hidden_size`: 256"),
        (["vae_config.latent_channels=8"],
         r"`unet_config\.in_channels`: 4 must equal `vae_config\.latent_channels`: 8"),
        # Caching one view per image in memory would silently drop random flips (the disk cache holds both).
        (["cache_latents=true", "random_flip=true"],
         r"`cache_latents`: true with `latent_cache`: 'memory' caches one view per image, so `random_flip`: true "
         r"would never flip; set latent_cache=disk \(which caches both flips\), random_flip=false, or "
         r"cache_latents=false"),
        (["dataset_name=none", "train_data_dir=data/x", "cache_latents=true", "center_crop=false"],
         r"`cache_latents`: true caches one view per image, so the random crop of `center_crop`: false would always be "
         r"the center one; set center_crop=true, or cache_latents=false"),
        # The shapes judge.
        (["eval_steps=0"], r"`eval_steps`: 0 must be ≥ 1, or none"),
        (["dataset_name=none", "train_data_dir=data/x", "eval_steps=100"],
         r"`eval_steps`: 100 runs the shapes judge, which reads the built-in shapes grammar; it needs `dataset_name`: "
         r"'shapes' \(got dataset_name=None, train_data_dir='data/x'\), or set eval_steps=none"),
        (["dataset_name=my/hub-data", "eval_steps=100"], r"`eval_steps`: 100 runs the shapes judge.*got "
                                                          r"dataset_name='my/hub-data'"),
        (["eval_guidance_scales=[]"], r"`eval_guidance_scales`: \[\] must be a non-empty list of distinct "
                                      r"numbers ≥ 0"),
        (["eval_guidance_scales=[1, 1]"], r"`eval_guidance_scales`: \[1\.0, 1\.0\] must be a non-empty list of "
                                          r"distinct numbers ≥ 0"),
        (["eval_guidance_scales=[-1]"], r"`eval_guidance_scales`: \[-1\.0\] must be a non-empty list"),
        (["eval_per_caption=0"], r"`eval_per_caption`: 0 must be ≥ 1"),
        (["eval_num_inference_steps=0"], r"`eval_num_inference_steps`: 0 must be ≥ 1"),
        (["eval_num_inference_steps=1001"], r"`eval_num_inference_steps`: 1001 cannot be larger than "
                                            r"`scheduler_config\.num_train_timesteps`: 1000"),
    ],
)
def test_cross_field_checks(overrides, match):
    with pytest.raises(ValueError, match=match):
        load_config(None, [*SHAPES, *overrides])


def test_valid_combinations_of_the_checked_fields():
    config = load_config(None, [*SHAPES, "zero_terminal_snr=true", "prediction_type=v_prediction",
                                "push_to_hub=true", "hub_model_id=me/model", "validation_steps=5",
                                "validation_prompts=[a red circle]", "lr_scheduler=cosine", "lr_warmup_steps=10",
                                "resume_from_checkpoint=latest", "checkpointing_steps=none", "snr_gamma=5.0"])
    assert config.resume_from_checkpoint == "latest" and config.checkpointing_steps is None


def test_caching_is_allowed_where_it_keeps_every_augmentation():
    # The shapes dataset is drawn square at `resolution`: a random crop of it is the whole image.
    assert load_config(None, [*SHAPES, "cache_latents=true", "center_crop=false"]).cache_latents
    config = load_config(None, ["train_data_dir=data/x", "cache_latents=true", "center_crop=true"])
    assert config.cache_latents and not config.random_flip


def test_resumable_changes_name_real_keys():
    from training.config import RESUMABLE_CHANGES

    assert RESUMABLE_CHANGES <= {f.name for f in dataclasses.fields(TrainConfig)}
    # What a resumed run trains on must be in every checkpoint's record.
    assert not RESUMABLE_CHANGES & {"seed", "learning_rate", "train_batch_size", "gradient_accumulation_steps",
                                    "unet_config", "dataset_name", "mixed_precision", "lr_scheduler", "use_ema"}


def test_pretrained_parts_skip_the_from_scratch_shape_checks():
    # The UNet comes from a repo, so its config dict need not match the from-scratch text encoder; a pretrained
    # VAE and an empty vae_config leave the resolution check to training.models.check_compatible.
    config = load_config(None, [*SHAPES, "pretrained_model_name_or_path=some/repo", "unet_config.cross_attention_dim=7",
                                "vae_config={}", "resolution=100"])
    assert config.vae_downsampling_factor is None


def test_tiny_config_resolution_matches_its_vae():
    config = load_config(CONFIGS / "tiny.yaml", [])
    assert config.vae_downsampling_factor == 2
    assert config.unet_config["sample_size"] * 2 == config.resolution
    with pytest.raises(ValueError, match=r"`resolution`: 33 must be divisible by the VAE's downsampling factor 2"):
        load_config(CONFIGS / "tiny.yaml", ["resolution=33"])


# ---- saving ------------------------------------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path):
    config = load_config(CONFIGS / "tiny.yaml", ["mixed_precision=no", "learning_rate=3e-5", "hub_model_id=me/x",
                                                 "validation_prompts=[yes, 'a: b', '1e-3']", "snr_gamma=5",
                                                 "scheduler_config.beta_schedule=linear", "variant=fp16"])
    path = tmp_path / "out" / "config.yaml"
    save_config(config, path)
    assert path.read_text().startswith("#")
    loaded = load_config(path, [])
    assert loaded == config
    assert config_to_dict(loaded) == config_to_dict(config)
    assert set(config_to_dict(config)) == {f.name for f in dataclasses.fields(TrainConfig)}
    assert yaml.safe_load(path.read_text())["mixed_precision"] == "no"  # quoted, so any YAML reader agrees


# ---- shipped configs ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    assert path.read_text().startswith("#"), "each config starts with a comment saying what it is for"
    config = load_config(path, [])
    assert isinstance(config, TrainConfig)


def test_shipped_configs_exist():
    assert {p.name for p in CONFIGS.glob("*.yaml")} >= {"tiny.yaml", "shapes.yaml", "sd15-finetune.yaml"}


@pytest.mark.parametrize("path", sorted((CONFIGS / "accelerate").glob("*.yaml")), ids=lambda p: p.name)
def test_accelerate_configs_load(path):
    from accelerate.commands.config.config_args import ClusterConfig

    assert path.read_text().startswith("#")
    config = ClusterConfig.from_yaml_file(str(path))  # raises on keys accelerate doesn't know
    assert config.num_processes == 2
    assert config.use_cpu == (path.name == "cpu_2proc.yaml")


def test_resumable_and_stage_keys_come_from_the_fields():
    """Which keys a resume may change, and which only one stage reads, is written on each field (`field(metadata=)`);
    the derived sets are exactly the lists that were kept by hand before."""
    from training.config import DIFFUSION_ONLY_KEYS, RESUMABLE_CHANGES, VAE_RESUMABLE_CHANGES

    run_keys = {
        "output_dir", "overwrite_output_dir", "report_to", "logging_dir", "tracker_project_name", "cache_dir",
        "dataloader_num_workers", "allow_pickle", "max_train_steps", "non_finite_loss", "max_consecutive_non_finite",
        "gradient_checkpointing", "num_processes", "ddp_timeout", "checkpointing_steps", "checkpoints_total_limit",
        "resume_from_checkpoint", "validation_prompts", "validation_steps", "num_validation_images",
        "num_inference_steps", "guidance_scale", "validation_seed", "eval_steps", "eval_guidance_scales",
        "eval_per_caption", "eval_num_inference_steps", "push_to_hub", "hub_model_id", "hub_private", "model_license",
        "vae_output_dir", "vae_max_train_steps",
        "validation_resolutions",  # added with aspect-ratio bucketing
        "trigger_words",  # added with LoRA (the model card's)
        "latent_cache_dir", "main_process_timeout",  # added with scale-out (issue 14)
        "dynamo_backend",  # added with torch.compile (issue 17): how the step runs, not what it trains
    }  # fmt: skip
    vae_only = {"vae_train_batch_size", "vae_learning_rate", "kl_weight"}
    diffusion_only = {
        "pretrained_model_name_or_path", "revision", "variant", "pretrained_unet", "unet_subfolder", "unet_config",
        "pretrained_vae", "vae_subfolder", "pretrained_text_encoder", "text_encoder_subfolder", "text_encoder_config",
        "pretrained_tokenizer", "tokenizer_subfolder", "tokenizer_vocab_size", "train_text_encoder",
        "scheduler_config", "prediction_type", "zero_terminal_snr", "snr_gamma", "noise_offset", "cfg_dropout",
        "train_batch_size", "learning_rate", "scale_lr", "allow_tf32", "cache_latents", "cache_text_embeddings",
        # added with LoRA and DreamBooth (issue 13)
        "training_mode", "lora_rank", "lora_alpha", "lora_dropout", "lora_target_modules", "train_text_encoder_lora",
        "instance_prompt", "with_prior_preservation", "class_data_dir", "class_prompts", "num_class_images",
        "class_guidance_scale", "class_num_inference_steps", "prior_loss_weight",
        "latent_cache",  # added with scale-out (issue 14)
        "attention_processor",  # added with the step candidates (issue 17)
        "dynamo_backend",  # added with torch.compile (issue 17): the VAE stage runs eager
    }  # fmt: skip
    assert RESUMABLE_CHANGES == run_keys | vae_only
    assert DIFFUSION_ONLY_KEYS == diffusion_only
    assert VAE_RESUMABLE_CHANGES == run_keys | diffusion_only


def test_an_empty_value_unsets_a_key(tmp_path):
    """`key=` puts a key back to its default, so that a command line can switch the data source of a config that
    names one (`train_data_dir=DIR dataset_name=`) or drop a YAML file's setting."""
    path = write_yaml(tmp_path, "dataset_name: shapes\nresume_from_checkpoint: latest\nlearning_rate: 3e-4\n")
    folder = str(tmp_path / "images")
    config = load_config(path, [f"train_data_dir={folder}", "dataset_name=", "resume_from_checkpoint=",
                                "learning_rate= "])  # fmt: skip
    assert (config.dataset_name, config.train_data_dir) == (None, folder)
    assert config.resume_from_checkpoint is None and config.learning_rate == TrainConfig.learning_rate
    with pytest.raises(ValueError, match=r"Set exactly one data source"):
        load_config(path, ["dataset_name="])  # unset, and nothing else set
    with pytest.raises(ValueError, match=r"`resume_from_checkpoint`: '' is empty"):
        TrainConfig(dataset_name="shapes", resume_from_checkpoint="")  # still refused when given as a value
