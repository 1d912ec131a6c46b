"""Play with a model in a browser: a Gradio page for text to image, image to image and inpainting.

    python scripts/demo.py outputs/quickstart/model                 # then open http://127.0.0.1:7860
    python scripts/demo.py you/sculpt-shapes --port 8000 --share    # a Hub id; --share adds a public link
    python scripts/demo.py MODEL --lora lora_folder --lora_scale 0.8

MODEL is a folder sculpt saved, a Hub id, or a Stable Diffusion-format folder (pipelines/app.py says how each loads;
sculpt's folders run their own shipped code: `trust_remote_code=True`). Needs gradio: pip install -e '.[demo]'.
Bad arguments print one line to stderr and exit with code 2.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without `pip install -e .`


def fail(message: str) -> None:
    print(f"demo.py: error: {message}", file=sys.stderr)
    sys.exit(2)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not argparse's usage block
        fail(message)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and check everything that can be checked before torch is imported, so bad arguments fail fast."""
    parser = _Parser(description=__doc__.split("\n")[0])
    parser.add_argument("model", help="a folder written by save_pretrained, a Hub id, or an SD-format folder")
    parser.add_argument("--lora", default=None, help="LoRA weights (a file, folder or Hub id) for load_lora_weights")
    parser.add_argument("--lora_scale", type=float, default=1.0, help="how strongly the LoRA applies (default 1)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 serves other machines too")
    parser.add_argument("--share", action="store_true", help="also serve it on a public gradio.live link")
    parser.add_argument("--allow_pickle", action="store_true",
                        help="also load pickled weights (*.bin), which can run code: only for a model you trust")
    parser.add_argument("--device", default=None, help="default: cuda when there is a GPU, else cpu")
    args = parser.parse_args(argv)

    model = Path(args.model).expanduser()
    if model.exists() and not (model / "model_index.json").is_file():
        fail(f"MODEL: {args.model} has no model_index.json; pass a folder written by save_pretrained.")
    looks_like_path = args.model.startswith((".", "/", "~")) or args.model.count("/") > 1
    if not model.exists() and looks_like_path:
        fail(f"MODEL: no such folder: {args.model}")
    if args.lora is not None and args.lora.startswith((".", "/", "~")) and not Path(args.lora).expanduser().exists():
        fail(f"--lora: no such file or folder: {args.lora}")
    if args.lora is None and args.lora_scale != 1.0:
        fail("--lora_scale needs --lora: it scales the LoRA weights that --lora loads.")
    if not 0 < args.port < 65536:
        fail(f"--port: {args.port} must be in 1..65535.")
    if importlib.util.find_spec("gradio") is None:
        fail("the demo needs gradio, which is not installed: pip install -e '.[demo]' (or pip install gradio).")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch

    from pipelines.app import apply_lora, build_demo, load_pipelines

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        torch.empty(0, device=device)
    except (RuntimeError, ValueError, AssertionError) as error:  # AssertionError: torch built without CUDA
        fail(f"--device: {device!r} is not a device torch can use here: {str(error).splitlines()[0]}")
    try:
        pipelines = load_pipelines(args.model, allow_pickle=args.allow_pickle, device=device)
    except Exception as error:  # noqa: BLE001 - any load failure is a bad MODEL argument to the user
        reason = str(error).splitlines()[0] if str(error) else str(type(error))
        if "safetensors" in reason and not args.allow_pickle:
            reason += " (pass --allow_pickle to load pickled weights you trust)"
        fail(f"MODEL: could not load {args.model!r}: {reason}")
    if args.lora is not None:
        try:
            apply_lora(pipelines, args.lora, args.lora_scale)
        except ValueError as error:  # no LoRA loader, or a file that does not fit the model (pipelines/lora.py)
            fail(str(error).replace("`lora`", "--lora").replace("`pretrained_model_name_or_path_or_dict`", "--lora"))
        except Exception as error:  # noqa: BLE001 - unreadable or mismatched LoRA weights
            reason = str(error).splitlines()[0] if str(error) else str(type(error))
            fail(f"--lora: could not load {args.lora!r}: {reason}")
    demo = build_demo(pipelines)
    print(f"serving {args.model} at http://{args.host}:{args.port} (Ctrl+C stops)")
    demo.launch(server_name=args.host, server_port=args.port, share=args.share)


if __name__ == "__main__":
    main()
