"""A Python that can run diffusers' `train_text_to_image.py`: sculpt's own environment plus `torchvision`.

The script imports `torchvision.transforms` (pure Python) and nothing else of torchvision. sculpt does not depend on
torchvision, and on a CPU-only torch the wheel that pip resolves may be a CUDA build whose compiled operators fail to
register (`import torchvision` raises "operator torchvision::nms does not exist" in `_meta_registrations`; the case
of torchvision 0.28.0 next to torch 2.13.0+cpu, see ../shared/benchmarks/README.md). So the benchmark makes a
throwaway venv that sees sculpt's packages through a .pth file, installs the matching torchvision there with
`--no-deps` (it can never replace torch), and, only if the import fails that way, guards the two registration
imports in that venv's copy of torchvision/__init__.py. Nothing outside the venv is touched.
"""

from __future__ import annotations

import site
import subprocess
import sys
from pathlib import Path

# torchvision 0.(N+15) is the release built for torch 2.N (0.20 ↔ 2.5, ..., 0.28 ↔ 2.13).
TORCHVISION_MINOR_OFFSET = 15
_UNGUARDED = "from torchvision import (\n    _autograd_registrations,\n    _meta_registrations,\n"
_GUARDED = (
    "try:  # added by sculpt's benchmark: a CUDA build's compiled ops cannot register against a CPU torch\n"
    "    from torchvision import _autograd_registrations, _meta_registrations\n"
    "except RuntimeError:\n"
    "    pass\n"
    "from torchvision import (\n"
)
_CHECK = ("import torchvision, diffusers, accelerate, datasets; from torchvision import transforms; "
          "print(torchvision.__version__)")


def check_python(python: str | Path) -> tuple[bool, str]:
    """(True, torchvision version) if `python` has what diffusers' script imports, else (False, the error's last
    line)."""
    result = subprocess.run([str(python), "-c", _CHECK], capture_output=True, text=True, timeout=300)
    if result.returncode == 0:
        return True, result.stdout.strip()
    lines = (result.stderr or result.stdout).strip().splitlines()
    return False, lines[-1] if lines else f"exit code {result.returncode}"


def torchvision_requirement() -> str:
    import torch

    major, minor = (int(part) for part in torch.__version__.split("+")[0].split(".")[:2])
    if major != 2:
        raise RuntimeError(f"No known torchvision release for torch {torch.__version__}; pass --diffusers_python.")
    return f"torchvision==0.{minor + TORCHVISION_MINOR_OFFSET}.*"


def make_venv(folder: str | Path) -> tuple[Path, str]:
    """(python, a sentence saying what was done) for a venv at `folder` that runs diffusers' script, reusing one that
    already works."""
    folder = Path(folder).resolve()
    python = folder / "bin" / "python"
    if python.exists() and check_python(python)[0]:
        return python, _note(folder, python)
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True, capture_output=True)
    purelib = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  check=True, capture_output=True, text=True).stdout.strip())  # fmt: skip
    # After the venv's own site-packages, so its torchvision comes first and everything else is sculpt's.
    (purelib / "_sculpt_environment.pth").write_text("".join(f"{path}\n" for path in site.getsitepackages()))
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--no-deps", torchvision_requirement()],
        capture_output=True, text=True,
    )  # fmt: skip
    if install.returncode != 0:
        raise RuntimeError(f"pip could not install {torchvision_requirement()} into {folder}: "
                           f"{install.stderr.strip().splitlines()[-1:]}")  # fmt: skip
    works, error = check_python(python)
    if not works and "does not exist" in error:  # the CUDA build's operator registration, as described above
        init = purelib / "torchvision" / "__init__.py"
        text = init.read_text()
        if _UNGUARDED not in text:
            raise RuntimeError(f"{init}: `import torchvision` fails ({error}) and its imports are not the ones this "
                               f"benchmark knows how to guard; pass --diffusers_python.")  # fmt: skip
        init.write_text(text.replace(_UNGUARDED, _GUARDED))
        works, error = check_python(python)
    if not works:
        raise RuntimeError(f"the venv {folder} still cannot import what diffusers' script needs: {error}")
    return python, _note(folder, python)


def _note(folder: Path, python: Path) -> str:
    init = next(folder.glob("lib/python*/site-packages/torchvision/__init__.py"), None)
    guarded = init is not None and _GUARDED in init.read_text()
    version = check_python(python)[1]
    note = f"diffusers' script ran in the throwaway venv {folder} (sculpt's packages + torchvision {version}, --no-deps"
    if guarded:
        note += "; its compiled ops do not register against this CPU torch, so that venv's copy of torchvision " \
                "guards the import of _meta_registrations/_autograd_registrations: the script uses only " \
                "torchvision.transforms"  # fmt: skip
    return note + ")."
