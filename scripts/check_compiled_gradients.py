"""Does torch.compile train what eager trains? One forward + backward of a config's UNet (random weights, random
inputs), eager and compiled, compared output by output and gradient by gradient:

    python scripts/check_compiled_gradients.py --config configs/shapes.yaml --backend inductor --mixed_precision bf16

prints the largest output difference and every parameter whose gradient is off by more than --tolerance (relative
norm), and exits 1 when any is. With torch 2.13 on CPU, inductor with bf16 autocast fails it (294 of the
quickstart UNet's 324 gradients off, 278 by 100%) while fp32 passes: why the trainer refuses `dynamo_backend=inductor` with
mixed precision on a CPU (docs/performance.md). Rerun it on a new torch to see whether that still holds.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.cli import ATTENTION_PROCESSORS, DYNAMO_BACKENDS, OneLineParser  # noqa: E402


def gradients(model, unet, inputs, dtype):
    import torch

    unet.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
        out = model(*inputs).sample
    out.float().pow(2).mean().backward()
    return out.detach().float(), {n: p.grad.clone() for n, p in unet.named_parameters() if p.grad is not None}


def main() -> int:
    parser = OneLineParser(prog="check_compiled_gradients.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/shapes.yaml")
    parser.add_argument("--backend", choices=DYNAMO_BACKENDS[1:], default="inductor")
    parser.add_argument("--mixed_precision", choices=("no", "bf16"), default="bf16")
    parser.add_argument("--attention", choices=ATTENTION_PROCESSORS, default="classic")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tolerance", type=float, default=0.05)
    args = parser.parse_args()
    if args.batch < 1:
        parser.error(f"--batch: {args.batch} must be ≥ 1")

    import torch

    from training.config import load_config
    from training.models import load_unet, set_attention_processor

    torch.manual_seed(0)
    unet = load_unet(load_config(args.config, []))
    set_attention_processor(unet, args.attention)
    unet.train()
    size, width = unet.config.sample_size, unet.config.cross_attention_dim
    inputs = (torch.randn(args.batch, unet.config.in_channels, size, size),
              torch.randint(0, 1000, (args.batch,)), torch.randn(args.batch, 77, width))  # fmt: skip
    dtype = torch.bfloat16 if args.mixed_precision == "bf16" else None
    eager_out, eager = gradients(unet, unet, inputs, dtype)
    compiled_out, compiled = gradients(torch.compile(unet, backend=args.backend), unet, inputs, dtype)
    off = {}
    for name, grad in eager.items():
        other = compiled.get(name)
        error = 1.0 if other is None else ((grad - other).norm() / grad.norm().clamp_min(1e-12)).item()
        if error > args.tolerance:
            off[name] = error
    print(f"{args.backend}, {args.mixed_precision}, {args.attention} attention, batch {args.batch}: output max "
          f"difference {(eager_out - compiled_out).abs().max().item():.3g} (of {eager_out.abs().max().item():.3g}); "
          f"{len(off)} of {len(eager)} gradients off by > {args.tolerance:.0%}")
    for name, error in off.items():
        print(f"  {name}: {error:.0%}")
    return 1 if off else 0


if __name__ == "__main__":
    sys.exit(main())
