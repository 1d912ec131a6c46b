"""scripts/bench_vs_diffusers.py and its training/bench/ package: the shared parts (an SD-format folder that diffusers'
StableDiffusionPipeline and sculpt's loaders both read, and the imagefolder), the optimizer-step stamps taken in real
launched processes, the table's arithmetic, and every bad argument (one line, exit code 2, nothing written). The slow
test runs the whole comparison for real at toy size, diffusers' script included (it builds the torchvision venv)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "bench_vs_diffusers.py"
TINY = str(ROOT / "configs" / "tiny.yaml")
# diffusers' script is not part of sculpt: SCULPT_DIFFUSERS_SCRIPT, else ../shared/benchmarks/ beside the checkout (or
# beside the folder of worktrees that holds it).
_CANDIDATES = [folder / "shared" / "benchmarks" / "diffusers_train_text_to_image.py"
               for folder in (ROOT.parent, ROOT.parent.parent)]  # fmt: skip
DIFFUSERS_SCRIPT = Path(os.environ.get("SCULPT_DIFFUSERS_SCRIPT")
                        or next((path for path in _CANDIDATES if path.is_file()), _CANDIDATES[0]))  # fmt: skip
# Any existing file passes the --diffusers_script check; the argument tests need no copy of diffusers' script.
SOME_FILE = str(Path(__file__).resolve())


def load_script():
    spec = importlib.util.spec_from_file_location("bench_vs_diffusers_cli", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # also puts the checkout on sys.path
    return module


cli = load_script()
from training.bench import parts, report, runs  # noqa: E402  (importable once the script has set sys.path)


# ---- the parts -------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path]:
    from training.config import load_config

    return parts.build_parts(load_config(TINY), tmp_path_factory.mktemp("parts"), num_samples=12)


def test_the_parts_load_in_stable_diffusion_pipeline_and_in_sculpt(built):
    import torch
    from diffusers import DDPMScheduler as DiffusersDDPMScheduler
    from diffusers import StableDiffusionPipeline

    from pipelines import DDPMScheduler
    from training.config import load_config
    from training.models import check_sources, load_noise_scheduler, load_unet

    model_dir, data_dir = built
    pipe = StableDiffusionPipeline.from_pretrained(model_dir, safety_checker=None, requires_safety_checker=False)
    config = load_config(TINY)
    assert isinstance(pipe.scheduler, DiffusersDDPMScheduler)
    assert list(pipe.unet.config.block_out_channels) == config.unet_config["block_out_channels"]
    assert pipe.tokenizer.model_max_length == config.text_encoder_config["max_position_embeddings"]
    # The scheduler is ours, saved as diffusers': the same noise schedule.
    ours = load_noise_scheduler(config)
    assert torch.equal(DDPMScheduler.from_config(pipe.scheduler.config).alphas_cumprod, ours.alphas_cumprod)
    # sculpt's trainer reads the same folder (safetensors, every subfolder) and gets the same UNet weights.
    sculpt_config = load_config(TINY, [f"pretrained_model_name_or_path={model_dir}", "dataset_name=null",
                                       f"train_data_dir={data_dir}"])  # fmt: skip
    check_sources(sculpt_config)
    unet = load_unet(sculpt_config)
    assert all(torch.equal(a, b) for a, b in zip(unet.state_dict().values(), pipe.unet.state_dict().values()))
    lines = (data_dir / "metadata.jsonl").read_text().splitlines()
    assert len(lines) == 12 and len(list(data_dir.glob("*.png"))) == 12
    assert json.loads(lines[0])["text"].startswith("a ")


def test_the_parts_are_the_same_bytes_on_every_build(built, tmp_path):
    from training.config import load_config

    again = parts.build_parts(load_config(TINY), tmp_path, num_samples=12)

    def digest(folder: Path) -> dict:
        return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip

    for first, second in zip(built, again):
        assert digest(first) == digest(second)


def test_dataset_size_is_whole_batches():
    from training.config import load_config

    config = load_config(TINY)  # num_shapes_samples: 64
    assert parts.dataset_size(config, 24) == 48
    assert parts.dataset_size(config, 8, num_samples=20) == 16


# ---- the stamps, in real launched processes --------------------------------------------------------------------------
def launch_with_stamps(tmp_path: Path, code: str) -> list[dict]:
    stamps = tmp_path / "stamps"
    stamps.mkdir()
    env = runs.launch_env(stamps, threads=1, cache_dir=tmp_path / "cache", sculpt=True)
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                            timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return runs.read_stamps(stamps)


def test_the_hook_stamps_every_step_of_a_plain_and_an_accelerate_optimizer(tmp_path):
    ranks = launch_with_stamps(tmp_path, """
        import sys
        assert "torch" not in sys.modules  # the hook waits for the program's own import of torch
        import torch
        from accelerate import Accelerator
        model = torch.nn.Linear(4, 4)
        plain = torch.optim.AdamW(model.parameters())
        wrapped = Accelerator(cpu=True).prepare(torch.optim.SGD(model.parameters(), lr=0.1))
        for optimizer, steps in ((plain, 3), (wrapped, 4)):
            for _ in range(steps):
                model(torch.randn(2, 4)).sum().backward()
                optimizer.step()
                optimizer.zero_grad()
    """)
    (rank,) = ranks
    assert (rank["rank"], rank["world"]) == (0, 1)
    assert len(rank["steps"]) == 7 and rank["steps"] == sorted(rank["steps"])
    assert rank["rss_kib"] > 10_000  # KiB: a process with torch loaded holds far more than 10 MB


def test_a_process_that_never_steps_writes_nothing(tmp_path):
    assert launch_with_stamps(tmp_path, "import torch; torch.optim.AdamW(torch.nn.Linear(2, 2).parameters())") == []


def rank(steps: list[float], rank_index: int = 0, world: int = 1, rss: int | None = 2048) -> dict:
    return {"rank": rank_index, "world": world, "started": 0.0, "steps": steps, "wall": [100 + s for s in steps],
            "rss_kib": rss, "gpu_bytes": 0}  # fmt: skip


def test_summarize_times_the_steps_after_the_warmup_on_the_slowest_rank():
    # After 2 warm-up steps, rank 0's steps take 1, 2, 2 s (mean 5/3, median 2) and rank 1's 1, 1, 5 s (a burst:
    # mean 7/3, median 1). The mean goes by rank 1, the median by rank 0: each by its slowest rank.
    first, second = rank([1, 2, 3, 5, 7]), rank([1, 2, 3, 4, 9], rank_index=1, world=2, rss=1024)
    measured = runs.summarize([first, second], warmup=2, batch=12, launched=90.0, exited=120.0)
    assert measured["images_per_s"] == pytest.approx(12 / (7 / 3))
    assert measured["images_per_s_median_step"] == pytest.approx(12 / 2)
    assert measured["startup_s"] == pytest.approx(101 - 90)
    assert measured["startup_from_interpreter_s"] == pytest.approx(101 - 0)
    assert measured["peak_rss_mib"] == pytest.approx(3.0)
    assert (measured["steps"], measured["wall_s"]) == (5, 30.0)


@pytest.mark.parametrize(
    "ranks, message",
    [
        ([], "no process wrote a step stamp"),
        ([rank([1, 2, 3]), rank([1, 2], rank_index=1)], r"different numbers of times: \[2, 3\]"),
        ([rank([1, 2])], "only 2 optimizer steps, not more than the 2 warm-up steps"),
        ([rank([1, 2, 3], rss=None)], "did not exit cleanly"),
    ],
)
def test_summarize_refuses_incomplete_stamps(ranks, message):
    with pytest.raises(RuntimeError, match=message):
        runs.summarize(ranks, warmup=2, batch=4, launched=0.0, exited=1.0)


def result(tool: str, processes: int, repeat: int, images_per_s: float) -> runs.RunResult:
    return runs.RunResult(tool=tool, processes=processes, repeat=repeat, steps=5, world_size=processes,
                          images_per_s=images_per_s, images_per_s_median_step=images_per_s, startup_s=10.0,
                          startup_from_interpreter_s=8.0, wall_s=20.0, peak_rss_mib=500.0, peak_gpu_mib=0.0,
                          load_before=0.0, load_after=0.0, log="")  # fmt: skip


def test_the_ratio_is_paired_by_repeat_and_the_priming_run_is_left_out():
    results = [result("diffusers", 1, 0, 1000.0), result("sculpt", 1, 0, 1.0),  # priming: not measured
               result("diffusers", 1, 1, 10.0), result("sculpt", 1, 1, 12.0),
               result("diffusers", 1, 2, 20.0), result("sculpt", 1, 2, 20.0)]  # fmt: skip
    floor = {"images_per_s_per_process": {"fp32": {"unet_only": 40.0}}}
    rows = {row["tool"]: row for row in report.training_rows(results, floor, "fp32")}
    assert rows["sculpt"]["ratio_to_diffusers"] == pytest.approx((1.1, 1.0, 1.2))  # 12/10 and 20/20, not 16/15
    assert rows["sculpt"]["ratio_to_diffusers_median_step"] == pytest.approx((1.1, 1.0, 1.2))
    assert rows["sculpt"]["images_per_s"] == pytest.approx((16.0, 12.0, 20.0))
    assert rows["diffusers"]["fraction_of_floor"] == pytest.approx(15.0 / 40.0)
    assert "| sculpt | 1 | 16.0 (12.0–20.0) | 1.10 (1.00–1.20) |" in report.training_table(list(rows.values()))


# ---- bad arguments ---------------------------------------------------------------------------------------------------
def parse_error(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        cli.parse_args(list(argv))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("bench_vs_diffusers.py: error: ")
    return err


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "--diffusers_script is required: the path of diffusers' examples/text_to_image/train_text_to_image.py."),
        (["--diffusers_script", "no/such/train.py"], "--diffusers_script: no such file: no/such/train.py"),
        (["--steps", "0"], "--steps: 0 must be >= 1."),
        (["--warmup", "0"], "--warmup: 0 must be >= 1."),
        (["--batch", "-4"], "--batch: -4 must be >= 1."),
        (["--repeats", "0"], "--repeats: 0 must be >= 1."),
        (["--threads", "0"], "--threads: 0 must be >= 1."),
        (["--sample_steps", "0"], "--sample_steps: 0 must be >= 1."),
        (["--sample_batch", "0"], "--sample_batch: 0 must be >= 1."),
        (["--run_timeout", "0"], "--run_timeout: 0.0 must be > 0."),
        (["--processes", "1,x"], "--processes: '1,x' is not a comma-separated list"),
        (["--processes", "2,2"], "--processes: '2,2' must list distinct counts >= 1"),
        (["--processes", "0"], "--processes: '0' must list distinct counts >= 1"),
        (["--batch", "9", "--processes", "1,2"], "--batch: 9 must be divisible by every --processes count (2 is not"),
        (["--mixed_precision", "fp8"], "argument --mixed_precision: invalid choice: 'fp8'"),
        (["--diffusers_python", "/no/such/python"], "--diffusers_python: /no/such/python is not an executable file."),
        (["--config", "no/such.yaml"], "--config: Config file 'no/such.yaml' does not exist."),
        (["learning_rat=1e-4"], "--config: Unknown config key `learning_rat`. Did you mean `learning_rate`?"),
        (["learning_rate"], "unexpected argument 'learning_rate'; config settings are given as key=value"),
        (["prediction_type=sample"], "--config: `prediction_type`: 'sample' has no counterpart in diffusers' script"),
        (["unet_config.sample_size=8"], "--config: `unet_config.sample_size`: 8 must be `resolution` / VAE"),
        (["--num_samples", "0"], "--num_samples: 0 must be >= 1."),
        (["--num_samples", "20", "--batch", "32"], "--num_samples: 20 images are fewer than one --batch of 32."),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(capsys, tmp_path, argv, message):
    output_dir = tmp_path / "bench"
    script = [] if argv == [] or "--diffusers_script" in argv else ["--diffusers_script", SOME_FILE]
    err = parse_error(capsys, *script, "--config", TINY, "--output_dir", str(output_dir), *argv)
    assert message in err
    assert not output_dir.exists()  # checked before any work


def test_an_output_dir_the_benchmark_did_not_make_is_refused(capsys, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    err = parse_error(capsys, "--diffusers_script", SOME_FILE, "--output_dir", str(tmp_path))
    assert f"--output_dir: {tmp_path} exists and was not made by this benchmark" in err
    (tmp_path / "file").write_text("")
    err = parse_error(capsys, "--diffusers_script", SOME_FILE, "--output_dir", str(tmp_path / "file"))
    assert "exists and was not made by this benchmark" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "notes.txt"]  # nothing added, nothing removed
    assert (tmp_path / "notes.txt").read_text() == "mine" and (tmp_path / "file").read_text() == ""


def test_report_only_needs_a_previous_run(capsys, tmp_path):
    err = parse_error(capsys, "--report_only", "--output_dir", str(tmp_path))
    assert f"--report_only: {tmp_path} has no bench.json; run the benchmark into it first." in err


def test_the_command_line_says_so_too():
    result = subprocess.run([sys.executable, str(SCRIPT), "--diffusers_script", SOME_FILE, "--steps", "0"],
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 2
    assert result.stderr == "bench_vs_diffusers.py: error: --steps: 0 must be >= 1.\n"


def test_sculpt_and_diffusers_get_the_same_settings():
    from training.config import load_config

    forced = runs.sculpt_overrides(Path("/m"), Path("/d"), Path("/o"), Path("/c"), 2, 64, 35, "no", cached=False)
    config = load_config(TINY, forced)
    flags = runs.diffusers_arguments(config, Path("/m"), Path("/d"), Path("/o"), Path("/c"), 2, 64, 35)
    value = dict(zip(flags, flags[1:]))
    assert (config.train_batch_size, value["--train_batch_size"]) == (32, "32")
    assert (config.max_train_steps, value["--max_train_steps"]) == (35, "35")
    assert float(value["--learning_rate"]) == config.learning_rate
    assert float(value["--max_grad_norm"]) == config.max_grad_norm
    assert (config.use_ema, "--use_ema" in flags, config.ema_decay, config.ema_warmup) == (True, True, 0.9999, False)
    assert (config.lr_scheduler, value["--lr_scheduler"]) == ("constant", "constant")
    assert config.mixed_precision == value["--mixed_precision"] == "no"
    assert config.center_crop and "--center_crop" in flags and not config.random_flip and "--random_flip" not in flags
    assert not config.train_text_encoder and config.cfg_dropout == 0
    assert config.checkpointing_steps is None and int(value["--checkpointing_steps"]) > 35
    assert config.validation_prompts == [] and "--validation_prompts" not in flags


# ---- the whole comparison, for real ----------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.skipif(not DIFFUSERS_SCRIPT.is_file(), reason=f"diffusers' script not at {DIFFUSERS_SCRIPT}")
def test_a_tiny_comparison_runs_both_trainers_and_prints_the_table(tmp_path):
    from diffusers import StableDiffusionPipeline

    output_dir = tmp_path / "bench"
    command = [sys.executable, str(SCRIPT), "--diffusers_script", str(DIFFUSERS_SCRIPT), "--config", TINY,
               "--steps", "2", "--warmup", "1", "--batch", "4", "--repeats", "1", "--processes", "1,2",
               "--num_samples", "8", "--no_prime", "--sample_steps", "2", "--sample_batch", "2",
               "--output_dir", str(output_dir)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=1800,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    bench = json.loads((output_dir / "bench.json").read_text())
    assert "| diffusers train_text_to_image.py | 1 |" in result.stdout
    assert (output_dir / "bench.md").read_text() in result.stdout

    # Every run trained warmup + steps = 3 optimizer steps, in one group of its number of processes.
    assert {(r["tool"], r["processes"]) for r in bench["runs"]} == {
        (tool, p) for tool in ("diffusers", "sculpt", "sculpt_cached") for p in (1, 2)}  # fmt: skip
    for run in bench["runs"]:
        assert (run["steps"], run["world_size"]) == (3, run["processes"])
        stamps = list((Path(run["log"]).parent / "stamps").glob("stamps-*.txt"))
        assert len(stamps) == run["processes"]
        assert all(f.read_text().count("\nstep ") == 3 for f in stamps)
    for row in bench["training"]:
        numbers = [*row["images_per_s"], *row["startup_s"], *row["peak_rss_mib"], *row["ratio_to_diffusers"],
                   row["fraction_of_floor"]]  # fmt: skip
        assert all(math.isfinite(x) and x > 0 for x in numbers), row
    assert [row["pipeline"] for row in bench["sampling"]["rows"]] == ["ours", "ours_diffusers_scheduler", "sd"]
    assert all(row["max_abs_diff_vs_sd"] == 0.0 for row in bench["sampling"]["rows"])  # same components, same noise
    assert all(value > 0 for value in bench["floor"]["flops_per_image"].values())
    assert "torchvision" in " ".join(bench["notes"])  # the venv and its guard are reported
    StableDiffusionPipeline.from_pretrained(output_dir / "parts" / "model", safety_checker=None)

    # --report_only measures the same stamps again: the same rows.
    again = subprocess.run([sys.executable, str(SCRIPT), "--report_only", "--output_dir", str(output_dir)],
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    rows = json.loads((output_dir / "bench.json").read_text())["training"]
    assert [x for row in rows for x in row["images_per_s"]] == pytest.approx(
        [x for row in bench["training"] for x in row["images_per_s"]])  # fmt: skip
    assert "Tables recomputed from the same runs' stamps" in (output_dir / "bench.md").read_text()


# ---- the GPU script's parts, on CPU ----------------------------------------------------------------------------------
STEP_SCRIPT = ROOT / "scripts" / "bench_step.py"


def load_step_script():
    spec = importlib.util.spec_from_file_location("bench_step_cli", STEP_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_bare_step_runs_eager_on_the_benchmark_parts(built, tmp_path, capsys):
    model_dir, _ = built
    bench_json = tmp_path / "bench.json"
    bench_json.write_text(json.dumps({"args": {"batch": 2}, "training": [
        {"tool": "diffusers", "processes": 1, "images_per_s": [4.0, 4.0, 4.0]}]}))  # fmt: skip
    output = tmp_path / "step.json"
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        load_step_script().main(["--model", str(model_dir), "--batch", "2", "--steps", "2", "--warmup", "1",
                                 "--compile", "no", "--threads", "1", "--against", str(bench_json),
                                 "--output", str(output)])  # fmt: skip
        # Its --threads is for its own run: the caller's thread count comes back (a pytest process left at 1 thread
        # rounded later in-process images differently from the 2-thread subprocesses they were compared with).
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    (result,) = json.loads(output.read_text())["results"]
    assert result["mode"] == "eager" and result["attention"] == ["AttnProcessor2_0"]  # diffusers' SDPA processor
    assert math.isfinite(result["images_per_s"]) and result["images_per_s"] > 0
    # The row, with the × diffusers' trainer column: the step's images/s over the bench.json row's median (4.0).
    row = (f"| bare step, eager (AttnProcessor2_0) | {result['images_per_s']:.1f} | {result['first_step_s']:.1f} | 0 | "
           f"{result['images_per_s'] / 4.0:.2f} |")  # fmt: skip
    assert row in capsys.readouterr().out.splitlines()


def test_the_step_candidates_run_interleaved_with_a_profile(built, tmp_path, capsys):
    """Every combination of precision, memory format and attention processor, twice, interleaved; the summary table's
    ratios are each variant's median over the first's, and the profile names the convolution ops."""
    model_dir, _ = built
    output = tmp_path / "step.json"
    load_step_script().main(["--model", str(model_dir), "--batch", "2", "--steps", "1", "--warmup", "1",
                             "--compile", "no", "--threads", "1", "--mixed_precision", "no,bf16",
                             "--channels_last", "no,yes", "--attention", "sdpa,classic", "--repeats", "2",
                             "--profile", "1", "--output", str(output)])  # fmt: skip
    results = json.loads(output.read_text())["results"]
    assert len(results) == 2 * 8 and [r["repeat"] for r in results] == [0] * 8 + [1] * 8
    variants = [r["variant"] for r in results[:8]]
    assert variants == [r["variant"] for r in results[8:]] and len(set(variants)) == 8
    assert variants[0] == "bare step, eager, fp32 (AttnProcessor2_0)"
    assert "bare step, eager, bf16, channels_last (AttnProcessor)" in variants
    classic = next(r for r in results if r["attention"] == ["AttnProcessor"])
    assert classic["variant"].endswith("(AttnProcessor)")
    assert "convolution" in results[0]["profile"] and all("profile" not in r for r in results[1:])
    out = capsys.readouterr().out
    first = statistics.median(r["images_per_s"] for r in results if r["variant"] == variants[0])
    for variant in variants:
        rates = [r["images_per_s"] for r in results if r["variant"] == variant]
        assert (f"| {variant} | {statistics.median(rates):.1f} ({min(rates):.1f}–{max(rates):.1f}) | "
                f"{statistics.median(rates) / first:.2f} |") in out.splitlines()
    assert "torch.profiler, 1 steps of bare step, eager, fp32 (AttnProcessor2_0)" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "/no/such"], "--model: /no/such has no unet/config.json"),
        (["--batch", "0"], "--batch: 0 must be >= 1."),
        (["--compile", "maybe"], "--compile: 'maybe' must be no, yes or no,yes."),
        (["--compile", "yes", "--warmup", "1"], "--warmup: 1 must be >= 2 with torch.compile"),
        (["--threads", "0"], "--threads: 0 must be >= 1."),
        (["--against", "/no/such.json"], "--against: cannot read the training rows of /no/such.json"),
        (["--mixed_precision", "fp16"], "--mixed_precision: 'fp16' must be no, bf16 or no,bf16."),
        (["--channels_last", "yes,yes"], "--channels_last: 'yes,yes' must be no, yes or no,yes."),
        (["--attention", "flash"], "--attention: 'flash' must be sdpa, classic or sdpa,classic."),
        (["--repeats", "0"], "--repeats: 0 must be >= 1."),
        (["--profile", "-1"], "--profile: -1 must be >= 0 (steps to profile)."),
    ],
)
def test_bench_step_bad_arguments_are_one_line_and_exit_2(built, capsys, argv, message):
    model = [] if "--model" in argv else ["--model", str(built[0])]
    with pytest.raises(SystemExit) as exit_info:
        load_step_script().parse_args([*model, *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_bench_step_refuses_a_bench_json_of_another_batch(built, tmp_path, capsys):
    bench_json = tmp_path / "bench.json"
    bench_json.write_text(json.dumps({"args": {"batch": 64}, "training": []}))
    with pytest.raises(SystemExit):
        load_step_script().parse_args(["--model", str(built[0]), "--batch", "16", "--against", str(bench_json)])
    assert "--batch: 16 differs from the --batch 64 of" in capsys.readouterr().err


def test_bench_gpu_sh_refuses_an_unknown_argument():
    result = subprocess.run(["bash", str(ROOT / "scripts" / "bench_gpu.sh"), SOME_FILE, "--fast"],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 2
    assert result.stderr == ("bench_gpu.sh: error: unknown argument --fast (use --tiny, --tiny_compile, --output_dir "
                             "DIR)\n")
