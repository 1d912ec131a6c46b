"""Launching both trainers on the same parts, and reading what each run measured.

Both run under `accelerate launch` with the same launcher flags, the same threads per process and the same settings
(`shared_settings`). The numbers come from `training/bench/stamps/sitecustomize.py`, put first on the PYTHONPATH of the
launched processes only: one timestamp after every optimizer step, per process, plus its peak RSS at exit. So both
tools are timed by the same code at the same point of their loop, and nothing is read off their logs.

- steady-state images/s: the global batch over the mean time per step from step `warmup` to the last one (on the
  slowest rank; DDP keeps the ranks within one all-reduce of each other); and over the median step time, which a
  machine shared with other work (bursts that slow a few steps 2-5x) moves far less than the mean;
- start-up: from launching `accelerate launch` to the end of the first optimizer step (slowest rank), which counts
  imports, loading the parts and the data, any caching, and the first step;
- peak RSS: the sum over the training processes of each one's peak resident memory (the `accelerate launch` parent
  is left out: it is the same program for both).
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import subprocess
import time
from pathlib import Path

import torch

from training.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
STAMPS_DIR = Path(__file__).resolve().parent / "stamps"

# What each measured variant is; the cached one needs a frozen text encoder and one view per image (center crop, no
# flip), which SHARED_SETTINGS gives both tools anyway.
TOOLS = {
    "diffusers": "diffusers train_text_to_image.py",
    "sculpt": "sculpt",
    "sculpt_cached": "sculpt, cached latents + text",
}


# sculpt overrides that make its run train what diffusers' script trains from the same arguments: diffusers' defaults
# for what its script has no flag for (EMA decay 0.9999 without warmup, no caption dropout, a frozen text encoder), a
# constant learning rate, one view per image, and no validation, judging or periodic checkpoints on either side.
SHARED_SETTINGS = {
    "lr_scheduler": "constant", "lr_warmup_steps": "0", "scale_lr": "false", "gradient_accumulation_steps": "1",
    "use_ema": "true", "ema_decay": "0.9999", "ema_warmup": "false", "cfg_dropout": "0",
    "train_text_encoder": "false", "zero_terminal_snr": "false", "center_crop": "true", "random_flip": "false",
    "max_train_samples": "null", "checkpointing_steps": "null", "validation_prompts": "[]",
    "validation_steps": "null", "eval_steps": "null", "report_to": "tensorboard", "push_to_hub": "false",
    "resume_from_checkpoint": "null", "overwrite_output_dir": "true",
}  # fmt: skip


def sculpt_overrides(model_dir: Path, data_dir: Path, output_dir: Path, cache_dir: Path, processes: int,
                     batch: int, total_steps: int, mixed_precision: str, cached: bool) -> list[str]:  # fmt: skip
    """Every key=value the benchmark adds to the user's config for one sculpt run (the last word wins)."""
    values = {
        **SHARED_SETTINGS,
        "pretrained_model_name_or_path": str(model_dir), "pretrained_unet": "null", "pretrained_vae": "null",
        "pretrained_text_encoder": "null", "pretrained_tokenizer": "null", "dataset_name": "null",
        "train_data_dir": str(data_dir), "output_dir": str(output_dir), "cache_dir": str(cache_dir),
        "num_processes": str(processes), "train_batch_size": str(batch // processes),
        "max_train_steps": str(total_steps), "mixed_precision": mixed_precision,
        "cache_latents": str(cached).lower(), "cache_text_embeddings": str(cached).lower(),
    }  # fmt: skip
    return [f"{key}={value}" for key, value in values.items()]


def diffusers_arguments(config: TrainConfig, model_dir: Path, data_dir: Path, output_dir: Path, cache_dir: Path,
                        processes: int, batch: int, total_steps: int) -> list[str]:  # fmt: skip
    """diffusers' script's flags for the same training as `config` (already resolved with `sculpt_overrides`)."""
    arguments = [
        "--pretrained_model_name_or_path", str(model_dir), "--train_data_dir", str(data_dir),
        "--output_dir", str(output_dir), "--cache_dir", str(cache_dir), "--resolution", str(config.resolution),
        "--center_crop", "--train_batch_size", str(batch // processes), "--max_train_steps", str(total_steps),
        "--gradient_accumulation_steps", "1", "--learning_rate", repr(config.learning_rate),
        "--lr_scheduler", "constant", "--lr_warmup_steps", "0", "--adam_beta1", repr(config.adam_beta1),
        "--adam_beta2", repr(config.adam_beta2), "--adam_weight_decay", repr(config.adam_weight_decay),
        "--adam_epsilon", repr(config.adam_epsilon), "--max_grad_norm", repr(config.max_grad_norm), "--use_ema",
        "--mixed_precision", config.mixed_precision, "--seed", str(config.seed),
        "--prediction_type", config.prediction_type, "--image_interpolation_mode", config.image_interpolation_mode,
        "--dataloader_num_workers", str(config.dataloader_num_workers), "--report_to", "tensorboard",
        "--checkpointing_steps", str(total_steps + 1),  # never: it has no "off"
    ]  # fmt: skip
    if config.snr_gamma is not None:
        arguments += ["--snr_gamma", repr(config.snr_gamma)]
    if config.noise_offset:
        arguments += ["--noise_offset", repr(config.noise_offset)]
    if config.gradient_checkpointing:
        arguments.append("--gradient_checkpointing")
    if config.allow_tf32:
        arguments.append("--allow_tf32")
    return arguments


def launch_command(python: str | Path, processes: int, mixed_precision: str) -> list[str]:
    """`accelerate launch` without an accelerate config file; several processes form one DDP group on a free port."""
    command = [str(python), "-m", "accelerate.commands.launch", "--num_machines", "1",
               "--mixed_precision", mixed_precision, "--dynamo_backend", "no"]  # fmt: skip
    if processes == 1:
        return [*command, "--num_processes", "1"]
    return [*command, "--multi_gpu", "--num_processes", str(processes), "--main_process_port", "0"]


def launch_env(stamps: Path, threads: int, cache_dir: Path, sculpt: bool) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        SCULPT_BENCH_STAMPS=str(stamps),
        # Our stamps first; sculpt's runs import this checkout's sculpt, diffusers' runs nothing of ours.
        PYTHONPATH=os.pathsep.join([str(STAMPS_DIR)] + ([str(ROOT)] if sculpt else [])),
        OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
        HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
        HF_DATASETS_CACHE=str(cache_dir / "datasets"),
    )  # fmt: skip
    if not torch.cuda.is_available():
        # accelerate forms a gloo group on CPU only when told it is on CPU: without this, `--multi_gpu` on a CPU
        # machine runs diffusers' script as N independent single-process trainings (sculpt asks for CPU itself).
        env["ACCELERATE_USE_CPU"] = "true"
    return env


@dataclasses.dataclass
class RunResult:
    tool: str
    processes: int
    repeat: int  # 0 = the unmeasured priming run
    steps: int  # optimizer steps counted on every rank (the same on all, else the run is refused)
    world_size: int  # what torch.distributed reported in the run: processes that really trained together
    images_per_s: float
    images_per_s_median_step: float
    startup_s: float
    startup_from_interpreter_s: float  # the training process's own start to the end of its first step (slowest)
    wall_s: float  # launch to exit, including the final save
    peak_rss_mib: float
    peak_gpu_mib: float  # max over ranks of torch.cuda.max_memory_allocated; 0 on CPU
    load_before: float  # 1-minute load average of the machine before and after: how noisy its neighbours were
    load_after: float
    log: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def read_stamps(folder: Path) -> list[dict]:
    """One dict per process that stepped: rank, world, started (time.time), steps (perf_counter list), wall (time.time
    list), rss_kib, gpu_bytes (None if it did not exit cleanly)."""
    ranks = []
    for path in sorted(folder.glob("stamps-*.txt")):
        rank = {"steps": [], "wall": [], "rss_kib": None, "gpu_bytes": 0}
        for line in path.read_text().splitlines():
            kind, *fields = line.split()
            if kind == "start":
                rank.update(rank=int(fields[0]), world=int(fields[1]), started=float(fields[2]))
            elif kind == "step":
                rank["steps"].append(float(fields[0]))
                rank["wall"].append(float(fields[1]))
            elif kind == "end":
                rank["rss_kib"], rank["gpu_bytes"] = int(fields[0]), int(fields[1])
        ranks.append(rank)
    return sorted(ranks, key=lambda r: r["rank"])


def summarize(ranks: list[dict], warmup: int, batch: int, launched: float, exited: float) -> dict:
    """The run's measurements from its stamps (see the module docstring); raises if they are incomplete."""
    if not ranks:
        raise RuntimeError("no process wrote a step stamp")
    counts = {len(r["steps"]) for r in ranks}
    if len(counts) != 1:
        raise RuntimeError(f"the ranks stepped different numbers of times: {sorted(counts)}")
    (steps,) = counts
    if steps <= warmup:
        raise RuntimeError(f"only {steps} optimizer steps, not more than the {warmup} warm-up steps")
    per_step = max((r["steps"][-1] - r["steps"][warmup - 1]) / (steps - warmup) for r in ranks)
    median_step = max(statistics.median(b - a for a, b in zip(r["steps"][warmup - 1 :], r["steps"][warmup:]))
                      for r in ranks)  # fmt: skip
    if any(r["rss_kib"] is None for r in ranks):
        raise RuntimeError("a training process did not exit cleanly (no peak memory recorded)")
    return {
        "steps": steps,
        "world_size": ranks[0]["world"],
        "images_per_s": batch / per_step,
        "images_per_s_median_step": batch / median_step,
        "startup_s": max(r["wall"][0] for r in ranks) - launched,
        "startup_from_interpreter_s": max(r["wall"][0] - r["started"] for r in ranks),
        "wall_s": exited - launched,
        "peak_rss_mib": sum(r["rss_kib"] for r in ranks) / 1024,
        "peak_gpu_mib": max(r["gpu_bytes"] for r in ranks) / 2**20,
    }


def run(tool: str, command: list[str], env: dict, run_dir: Path, processes: int, repeat: int, warmup: int,
        batch: int, timeout: float) -> RunResult:  # fmt: skip
    """Launch `command`, wait for it, and measure it from its stamps. A run that fails raises with its log's tail."""
    stamps = Path(env["SCULPT_BENCH_STAMPS"])
    stamps.mkdir(parents=True, exist_ok=True)
    log_path = run_dir / "log.txt"
    (run_dir / "command.json").write_text(json.dumps(command, indent=1))
    load_before = os.getloadavg()[0]
    with open(log_path, "w") as log:
        launched = time.time()
        try:
            result = subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout,
                                    cwd=ROOT)  # fmt: skip
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"{TOOLS[tool]} ran past {timeout:.0f} s; see {log_path}") from None
        exited = time.time()
    tail = " | ".join(log_path.read_text(errors="replace").strip().splitlines()[-3:])
    if result.returncode != 0:
        raise RuntimeError(f"{TOOLS[tool]} exited with {result.returncode} (log {log_path}): {tail[-600:]}")
    try:
        measured = summarize(read_stamps(stamps), warmup, batch, launched, exited)
    except RuntimeError as error:
        raise RuntimeError(f"{TOOLS[tool]}: {error} (log {log_path})") from None
    if measured["world_size"] != processes:
        raise RuntimeError(f"{TOOLS[tool]} trained with world size {measured['world_size']}, not {processes} "
                           f"processes in one group (log {log_path})")  # fmt: skip
    return RunResult(tool=tool, processes=processes, repeat=repeat, load_before=load_before,
                     load_after=os.getloadavg()[0], log=str(log_path), **measured)  # fmt: skip


def median_spread(values: list[float]) -> tuple[float, float, float]:
    """(median, min, max)."""
    return statistics.median(values), min(values), max(values)
