"""Training options that must change what happens, each checked for its effect on configs/tiny.yaml: weight variants,
TF32, the EMA warmup's inv_gamma/power, bf16 mixed precision, gradient checkpointing, the attention processor, noise
offset, zero terminal SNR, and the text encoding training shares with the pipeline."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import make_components, tiny
from diffusers import UNet2DConditionModel
from safetensors.torch import load_file

from pipelines import LatentDiffusionPipeline
from training.models import load_unet
from training.train import cache_text_embeddings, caption_embeddings, main

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")

ROOT = Path(__file__).resolve().parents[1]
QUIET = ["use_ema=false", "validation_prompts=[]"]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path)


def losses(folder: Path) -> list[float]:
    return [h["loss"] for h in json.loads((folder / "loss_history.json").read_text())]


class Watch:
    """Records `probe(module)` at every forward of a `cls` module while it is installed (a global forward pre-hook:
    it observes training, it changes nothing)."""

    def __init__(self, cls, probe):
        self.seen = []
        self.handle = torch.nn.modules.module.register_module_forward_pre_hook(
            lambda module, args: self.seen.append(probe(module)) if isinstance(module, cls) else None
        )

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def test_variant_selects_the_weight_file(tmp_path):
    plain, half = make_components(seed=0)["unet"], make_components(seed=1)["unet"]
    plain.save_pretrained(tmp_path / "unet")
    half.save_pretrained(tmp_path / "unet", variant="fp16")  # the name only: dtype stays float32
    assert sorted(p.name for p in (tmp_path / "unet").iterdir()) == [
        "config.json", "diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.safetensors"]
    for variant, expected in ((None, plain), ("fp16", half)):
        config = tiny(tmp_path / "out", f"pretrained_unet={tmp_path / 'unet'}", f"variant={variant or 'none'}")
        loaded = load_unet(config).state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in expected.state_dict().items()), variant


def test_allow_tf32_turns_tf32_on(tmp_path):
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        main(tiny(tmp_path, "allow_tf32=false"), dry_run=True)
        assert torch.backends.cuda.matmul.allow_tf32 is False  # false keeps torch's default
        main(tiny(tmp_path, "allow_tf32=true"), dry_run=True)
        assert torch.backends.cuda.matmul.allow_tf32 is True and torch.backends.cudnn.allow_tf32 is True
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_ema_warmup_follows_ema_inv_gamma_and_ema_power(tmp_path):
    """ema_n = d_n · ema_{n-1} + (1 - d_n) · θ_n with d_n = min(ema_decay, 1 - (1 + (n - 1) / inv_gamma)^-power)
    (diffusers' EMAModel warmup): read back from the raw and EMA weights of consecutive checkpoints."""
    inv_gamma, power = 2.0, 0.5
    main(tiny(tmp_path, "max_train_steps=3", "checkpointing_steps=1", "checkpoints_total_limit=none",
              "validation_prompts=[]", "ema_warmup=true",
              "ema_decay=0.99", f"ema_inv_gamma={inv_gamma}", f"ema_power={power}"))
    for step in (2, 3):
        previous = weights(tmp_path / f"checkpoint-{step - 1}" / "unet_ema" / "diffusion_pytorch_model.safetensors")
        ema = weights(tmp_path / f"checkpoint-{step}" / "unet_ema" / "diffusion_pytorch_model.safetensors")
        raw = weights(tmp_path / f"checkpoint-{step}" / "model.safetensors")
        # The decay that explains the update, by least squares over all weights: ema - θ = d (previous - θ).
        a = torch.cat([(previous[k] - raw[k]).flatten() for k in ema])
        b = torch.cat([(ema[k] - raw[k]).flatten() for k in ema])
        measured = float(a.double() @ b.double() / (a.double() @ a.double()))
        expected = min(0.99, 1 - (1 + (step - 1) / inv_gamma) ** -power)
        default = min(0.99, 1 - (1 + (step - 1) / 1.0) ** (-2 / 3))  # what the unwired defaults gave
        assert measured == pytest.approx(expected, abs=1e-4) and abs(measured - default) > 0.1, (step, measured)
        for k in ema:
            assert torch.allclose(ema[k], expected * previous[k] + (1 - expected) * raw[k], atol=1e-6), k


def test_bf16_trains_in_bf16_autocast_with_float32_parameters_and_saves_float32(tmp_path):
    from diffusers.models.embeddings import TimestepEmbedding  # inside the UNet's forward, where accelerate autocasts

    def probe(module):
        autocast = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
        return next(module.parameters()).dtype, autocast

    with Watch(TimestepEmbedding, probe) as watch:
        main(tiny(tmp_path, "mixed_precision=bf16", "max_train_steps=2", "checkpointing_steps=2", *QUIET))
    assert watch.seen == [(torch.float32, torch.bfloat16)] * 2  # master weights fp32, compute in bf16
    assert all(v > 0 and v == v for v in losses(tmp_path))
    for name in ("checkpoint-2/model.safetensors", "checkpoint-2/model_1.safetensors",  # trained UNet, text encoder
                 "unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors",
                 "vae/diffusion_pytorch_model.safetensors"):  # the frozen VAE ran in bf16, and is saved float32
        assert {t.dtype for t in weights(tmp_path / name).values()} == {torch.float32}, name


def test_bf16_on_a_cpu_without_bf16_units_is_warned_about(monkeypatch):
    """oneDNN's probe decides (mocked here: it is torch's, and this machine may have the units)."""
    from training.run import cpu_bf16_warning

    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    assert "without bf16 units" in cpu_bf16_warning("bf16", "cpu") and "mixed_precision=no" in cpu_bf16_warning(
        "bf16", "cpu")  # fmt: skip
    assert cpu_bf16_warning("no", "cpu") is None and cpu_bf16_warning("bf16", "cuda") is None
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    assert cpu_bf16_warning("bf16", "cpu") is None


def test_gradient_checkpointing_gives_the_same_training(tmp_path):
    runs = {}
    for flag in ("false", "true"):
        with Watch(UNet2DConditionModel, lambda unet: unet.is_gradient_checkpointing) as watch:
            runs[flag] = main(tiny(tmp_path / flag, f"gradient_checkpointing={flag}", "max_train_steps=3", *QUIET))
        assert set(watch.seen) == {flag == "true"}
    a, b = (weights(runs[f] / "unet" / "diffusion_pytorch_model.safetensors") for f in ("false", "true"))
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6
    assert losses(runs["false"]) == pytest.approx(losses(runs["true"]), rel=1e-6)


def test_classic_attention_processor_trains_the_same_model(tmp_path):
    """`attention_processor: classic` runs the UNet's attention through AttnProcessor (the same maths as SDPA's), in
    training and in its validation samples; the saved model is the same up to float rounding and names no processor."""
    def probe(unet):
        return tuple(sorted({type(p).__name__ for p in unet.attn_processors.values()}))

    runs = {}
    for name, cls in (("sdpa", "AttnProcessor2_0"), ("classic", "AttnProcessor")):
        with Watch(UNet2DConditionModel, probe) as watch:
            runs[name] = main(tiny(tmp_path / name, f"attention_processor={name}", "max_train_steps=3", *QUIET))
        assert watch.seen and set(watch.seen) == {(cls,)}
    a, b = (weights(runs[n] / "unet" / "diffusion_pytorch_model.safetensors") for n in ("sdpa", "classic"))
    # Adam's normalised updates turn float-rounding differences of near-zero gradients into up to ~lr per step.
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-3
    assert losses(runs["sdpa"]) == pytest.approx(losses(runs["classic"]), rel=1e-4)
    assert json.loads((runs["classic"] / "unet" / "config.json").read_text()) == json.loads(
        (runs["sdpa"] / "unet" / "config.json").read_text())  # fmt: skip


def graphs_compiled_by(config) -> tuple[Path, int]:
    """`main(config)`'s output folder, and how many graphs torch.compile built while it ran."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    return main(config), counters["stats"]["unique_graphs"]


def test_dynamo_backend_compiles_the_training_forward_and_nothing_else(tmp_path):
    """`dynamo_backend` runs the UNet's training forward through torch.compile ("aot_eager" here: dynamo's graphs
    and AOTAutograd's joint forward/backward, without inductor's code generation, so seconds instead of minutes). The
    losses are eager's; validation samples (another batch, no grad, eval mode) use the module itself, so they compile
    nothing more; the saved UNet and the checkpoint hold the module's own names."""
    eager, graphs = graphs_compiled_by(tiny(tmp_path / "eager", "max_train_steps=3", *QUIET))
    assert graphs == 0
    compiled, training_graphs = graphs_compiled_by(tiny(tmp_path / "compiled", "max_train_steps=3",
                                                        "dynamo_backend=aot_eager", *QUIET))  # fmt: skip
    assert training_graphs > 0
    assert losses(compiled) == losses(eager)

    validated, graphs = graphs_compiled_by(tiny(tmp_path / "validated", "max_train_steps=3", "dynamo_backend=aot_eager",
                                                "use_ema=false", "validation_prompts=[a red circle]",
                                                "validation_steps=2", "checkpointing_steps=3"))  # fmt: skip
    assert graphs == training_graphs  # a validation and the final samples compiled no graph of their own
    assert (validated / "samples.png").exists() and losses(validated) == losses(eager)
    saved = weights(validated / "unet" / "diffusion_pytorch_model.safetensors")
    checkpoint = weights(validated / "checkpoint-3" / "model.safetensors")
    assert saved.keys() == checkpoint.keys() and not any("_orig_mod" in k for k in saved)
    assert all(torch.equal(saved[k], checkpoint[k]) for k in saved)


def test_a_compiled_run_resumes_to_the_uninterrupted_compiled_run(tmp_path):
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    run = ("max_train_steps=4", "checkpointing_steps=2", "dynamo_backend=aot_eager", "validation_prompts=[]")
    main(tiny(full, *run))
    resumed.mkdir()
    shutil.copytree(full / "checkpoint-2", resumed / "checkpoint-2")
    main(tiny(resumed, *run, "resume_from_checkpoint=latest"))
    a, b = (weights(f / "unet" / "diffusion_pytorch_model.safetensors") for f in (full, resumed))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert losses(full) == losses(resumed)


def test_accelerate_launchs_own_dynamo_backend_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    """`accelerate launch --dynamo_backend inductor` would have accelerate compile the whole prepared model
    (sampling and checkpoint names included): the run stops at once and says which key to set instead."""
    from training.errors import UsageError

    monkeypatch.setenv("ACCELERATE_DYNAMO_BACKEND", "INDUCTOR")
    with pytest.raises(UsageError, match=r"accelerate launch asked for torch\.compile \(dynamo backend 'inductor', "
                                         r"from --dynamo_backend or its config file\).* launch with --dynamo_backend no "
                                         r"and set dynamo_backend=inductor"):
        main(tiny(tmp_path / "run"))
    assert not (tmp_path / "run").exists()
    main(tiny(tmp_path / "run", "dynamo_backend=inductor", "max_train_steps=1", "validation_prompts=[]"),
         dry_run=True)  # the same launch with the key set builds the run


def test_inductor_with_bf16_autocast_on_a_cpu_is_refused_before_anything_is_written(tmp_path):
    """torch 2.13's inductor gets the bf16-autocast UNet's backward wrong on CPU (measured: a quickstart trained so
    judged 0.04; the gradients of most parameters off by ~100%), so the combination is an error, not a slow surprise."""
    from training.errors import UsageError

    with pytest.raises(UsageError, match=r"`dynamo_backend`: 'inductor' with mixed_precision=bf16 on a CPU: torch .* "
                                         r"computes wrong gradients .* Use mixed_precision=no with it, or "
                                         r"dynamo_backend=no\."):
        main(tiny(tmp_path / "run", "dynamo_backend=inductor", "mixed_precision=bf16"))
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_inductor_trains_what_eager_trains(tmp_path):
    """The real thing: inductor's generated C++ for the forward and backward (1.5-2.5 min of compiling on 2 cores
    with an empty cache) trains within float rounding of eager."""
    eager = main(tiny(tmp_path / "eager", "max_train_steps=4", *QUIET))
    compiled = main(tiny(tmp_path / "compiled", "max_train_steps=4", "dynamo_backend=inductor", *QUIET))
    assert losses(compiled) == pytest.approx(losses(eager), rel=1e-4)
    a, b = (weights(f / "unet" / "diffusion_pytorch_model.safetensors") for f in (eager, compiled))
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-3


def test_noise_offset_changes_the_loss(tmp_path):
    """The offset adds a per-channel constant to ε (variance 1 + offset²): the untrained model's first loss grows."""
    plain = losses(main(tiny(tmp_path / "plain", "max_train_steps=2", *QUIET)))
    offset = losses(main(tiny(tmp_path / "offset", "noise_offset=0.5", "max_train_steps=2", *QUIET)))
    assert offset[0] > 1.1 * plain[0], (plain, offset)


def test_zero_terminal_snr_is_saved_with_trailing_timesteps(tmp_path):
    main(tiny(tmp_path, "zero_terminal_snr=true", "prediction_type=v_prediction", "max_train_steps=1", *QUIET))
    saved = json.loads((tmp_path / "scheduler" / "scheduler_config.json").read_text())
    assert saved["rescale_betas_zero_snr"] is True and saved["timestep_spacing"] == "trailing"
    assert saved["prediction_type"] == "v_prediction"
    scheduler = LatentDiffusionPipeline.from_pretrained(tmp_path).scheduler
    assert scheduler.alphas_cumprod[-1] < 1e-6  # ᾱ_T ≈ 0: the last step is pure noise
    scheduler.set_timesteps(4)
    assert scheduler.timesteps[0] == scheduler.config.num_train_timesteps - 1  # sampling starts at T


def test_training_encodes_captions_exactly_as_the_pipeline(components):
    from accelerate import Accelerator

    components["text_encoder"].config.use_attention_mask = True  # diffusers reads it; training used to ignore it
    pipe = LatentDiffusionPipeline(**components)
    captions = ["a small red circle on a white background", "", "a large cyan triangle on a gray background"]
    accelerator = Accelerator(cpu=True)
    expected = pipe.encode_prompt(captions, "cpu", do_classifier_free_guidance=False)[0]
    trained = caption_embeddings(captions, pipe.tokenizer, pipe.text_encoder, None, accelerator)
    cached = cache_text_embeddings(captions, pipe.tokenizer, pipe.text_encoder, accelerator)
    assert torch.equal(trained, expected)
    assert all(torch.equal(cached[c], e) for c, e in zip(captions, expected))
    components["text_encoder"].config.use_attention_mask = False  # the mask matters: without it, other embeddings
    assert not torch.equal(caption_embeddings(captions, pipe.tokenizer, pipe.text_encoder, None, accelerator), expected)


def test_check_compiled_gradients_compares_every_gradient_and_fails_when_told_to(capsys, monkeypatch):
    """scripts/check_compiled_gradients.py, the check behind the bf16 + inductor refusal, on the tiny UNet with
    aot_eager (exact: every gradient agrees), and with a tolerance below zero (every gradient counts as off: exit 1)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("check_compiled", ROOT / "scripts" / "check_compiled_gradients.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    argv = ["check_compiled_gradients.py", "--config", str(ROOT / "configs" / "tiny.yaml"), "--backend", "aot_eager",
            "--batch", "2"]  # fmt: skip
    monkeypatch.setattr("sys.argv", argv)
    assert module.main() == 0
    assert "aot_eager, bf16, classic attention, batch 2: output max difference 0 " in capsys.readouterr().out
    monkeypatch.setattr("sys.argv", [*argv, "--batch", "0"])
    with pytest.raises(SystemExit) as exit_:
        module.main()
    assert exit_.value.code == 2
    assert "check_compiled_gradients.py: error: --batch: 0 must be ≥ 1" in capsys.readouterr().err
    monkeypatch.setattr("sys.argv", [*argv, "--tolerance", "-1"])
    assert module.main() == 1
    out = capsys.readouterr().out
    count = int(out.split(" gradients off")[0].split("; ")[-1].split(" of ")[0])
    assert count > 0 and out.count("\n  ") == count
