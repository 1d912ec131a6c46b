"""The benchmark's tables: one row per (tool, processes) over the repeats, the sampling rows and the floor, as
markdown (printed, and written to bench.md for docs/performance.md to quote) and as bench.json."""

from __future__ import annotations

from .runs import TOOLS, RunResult, median_spread
from .sampling import PIPELINES


def training_rows(runs: list[RunResult], floor: dict | None, precision: str) -> list[dict]:
    """Per (processes, tool): median and (min, max) over the measured repeats of images/s, start-up, peak RSS, and the
    ratio to diffusers' run of the same repeat (paired: they ran back to back), plus the fraction of the floor."""
    measured = [r for r in runs if r.repeat > 0]
    by_key = {(r.tool, r.processes, r.repeat): r for r in measured}
    rows = []
    for processes in sorted({r.processes for r in measured}):
        for tool in TOOLS:
            mine = sorted((r for r in measured if r.tool == tool and r.processes == processes), key=lambda r: r.repeat)
            if not mine:
                continue
            pairs = [(r, by_key[("diffusers", processes, r.repeat)]) for r in mine
                     if ("diffusers", processes, r.repeat) in by_key]  # fmt: skip
            ratios = [r.images_per_s / d.images_per_s for r, d in pairs]
            median_ratios = [r.images_per_s_median_step / d.images_per_s_median_step for r, d in pairs]
            speed = median_spread([r.images_per_s for r in mine])
            row = {
                "tool": tool, "label": TOOLS[tool], "processes": processes, "repeats": len(mine),
                "images_per_s": speed, "startup_s": median_spread([r.startup_s for r in mine]),
                "images_per_s_median_step": median_spread([r.images_per_s_median_step for r in mine]),
                "wall_s": median_spread([r.wall_s for r in mine]),
                "peak_rss_mib": median_spread([r.peak_rss_mib for r in mine]),
                "peak_gpu_mib": median_spread([r.peak_gpu_mib for r in mine]),
                "ratio_to_diffusers": median_spread(ratios) if ratios else None,
                "ratio_to_diffusers_median_step": median_spread(median_ratios) if median_ratios else None,
                "fraction_of_floor": None,
            }  # fmt: skip
            if floor is not None:
                best = floor["images_per_s_per_process"][precision]["unet_only"] * processes
                row["fraction_of_floor"] = speed[0] / best
            rows.append(row)
    return rows


def _threads(count: int) -> str:
    return f"{count} thread" + ("s" if count != 1 else "")


def _spread(values, digits: int = 1) -> str:
    median, low, high = values
    return f"{median:.{digits}f} ({low:.{digits}f}–{high:.{digits}f})"


def training_table(rows: list[dict]) -> str:
    gpu = any(row["peak_gpu_mib"][2] > 0 for row in rows)
    head = ["tool", "processes", "images/s: median (min–max)", "× diffusers", "images/s at the median step",
            "× diffusers at the median step", "start-up s", "peak RSS MiB"]  # fmt: skip
    head += ["peak GPU MiB"] if gpu else []
    head += ["fraction of floor"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for row in rows:
        cells = [row["label"], str(row["processes"]), _spread(row["images_per_s"]),
                 _spread(row["ratio_to_diffusers"], 2) if row["ratio_to_diffusers"] else "–",
                 _spread(row["images_per_s_median_step"]),
                 _spread(row["ratio_to_diffusers_median_step"], 2) if row["ratio_to_diffusers_median_step"] else "–",
                 _spread(row["startup_s"]), f"{row['peak_rss_mib'][0]:.0f}"]  # fmt: skip
        cells += [f"{row['peak_gpu_mib'][0]:.0f}"] if gpu else []
        cells.append(f"{row['fraction_of_floor']:.2f}" if row["fraction_of_floor"] is not None else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def sampling_table(sampling: dict) -> str:
    lines = ["| pipeline | s/image: median (min–max) | × StableDiffusionPipeline: median (min–max) | "
             "max abs difference vs StableDiffusionPipeline |", "| --- | --- | --- | --- |"]  # fmt: skip
    for row in sampling["rows"]:
        lines.append(f"| {PIPELINES[row['pipeline']]} | {_spread(row['s_per_image'], 3)} | "
                     f"{_spread(row['ratio_to_sd'], 2)} | {row['max_abs_diff_vs_sd']:.2g} |")  # fmt: skip
    return "\n".join(lines)


def floor_table(floor: dict) -> str:
    flops, rates, per_process = floor["flops_per_image"], floor["rates"], floor["images_per_s_per_process"]
    lines = ["| quantity | fp32 | bf16 |", "| --- | --- | --- |"]
    where = f"{_threads(floor['threads'])}, CPU" if floor.get("device", "cpu") == "cpu" else floor["device"]
    lines.append(f"| matmul GFLOP/s ({where}) | {rates['matmul_fp32'] / 1e9:.1f} | "
                 f"{rates['matmul_bf16'] / 1e9:.1f} |")  # fmt: skip
    lines.append(f"| 3×3 convolution GFLOP/s | {rates['conv_fp32'] / 1e9:.1f} | {rates['conv_bf16'] / 1e9:.1f} |")
    lines.append(f"| floor images/s per process, UNet only | {per_process['fp32']['unet_only']:.1f} | "
                 f"{per_process['bf16']['unet_only']:.1f} |")  # fmt: skip
    lines.append(f"| floor images/s per process, + VAE encode + text encoder | "
                 f"{per_process['fp32']['with_vae_and_text']:.1f} | {per_process['bf16']['with_vae_and_text']:.1f} |")
    counts = (f"FLOPs per training image: UNet forward + backward {flops['unet_train'] / 1e6:.0f} M, VAE encoder "
              f"{flops['vae_encode'] / 1e6:.1f} M, text encoder {flops['text_encode'] / 1e6:.1f} M (forward).")
    return "\n".join(lines) + "\n\n" + counts


def markdown(header: list[str], rows: list[dict], sampling: dict | None, floor: dict | None, notes: list[str]) -> str:
    parts = ["\n".join(header), "### Training, steady state", training_table(rows)]
    if sampling is not None:
        settings = sampling["settings"]
        parts += [f"### Sampling ({settings['steps']} DDPM steps, batch {settings['batch']}, guidance "
                  f"{settings['guidance_scale']:g}, {settings['repeats']} interleaved repeats, "
                  f"{_threads(settings['threads'])})", sampling_table(sampling)]  # fmt: skip
    if floor is not None:
        parts += ["### The floor", floor_table(floor)]
    if notes:
        parts += ["### Notes", "\n".join(f"- {note}" for note in notes)]
    return "\n\n".join(parts) + "\n"
