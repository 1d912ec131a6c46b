"""The rules for editing pipelines/ that portable folders depend on (written down in pipelines/__init__.py): each test
names the module and the line that breaks a rule, so that an editor learns the rule from the failure."""

from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

import pytest

from pipelines.portable import module_source

PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"
MODULES = sorted(p.stem for p in PIPELINES.glob("*.py") if p.stem != "__init__")
# What a machine without sculpt has, besides the standard library (rule 3).
ALLOWED_THIRD_PARTY = {"torch", "numpy", "PIL", "diffusers", "transformers", "huggingface_hub", "safetensors"}
EXTRA_THIRD_PARTY = {"app": {"gradio"}}  # the browser demo (sculpt[demo]; a Space's sdk) imports gradio when it runs


def imports(module: str):
    """(node, at top level?) for every import statement of pipelines/<module>.py."""
    tree = ast.parse((PIPELINES / f"{module}.py").read_text(encoding="utf-8"))
    top = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, id(node) in top


@pytest.mark.parametrize("module", MODULES)
def test_relative_imports_are_inlinable(module):
    """Rule 1: only top-level `from .module import name`; no `from . import x`, no deeper levels, no absolute imports
    of the package itself."""
    for node, top_level in imports(module):
        where = f"pipelines/{module}.py:{node.lineno}"
        if isinstance(node, ast.ImportFrom) and node.level:
            assert node.level == 1 and node.module, (
                f"{where}: `from {'.' * node.level}{node.module or ''} import ...` cannot be inlined into a shipped "
                "file; write `from .module import name`.")  # fmt: skip
            assert top_level, f"{where}: a relative import inside a function is not inlined; move it to the top."
        names = [node.module] if isinstance(node, ast.ImportFrom) and not node.level else (
            [alias.name for alias in node.names] if isinstance(node, ast.Import) else [])  # fmt: skip
        for name in names:
            assert name.split(".")[0] != "pipelines", (
                f"{where}: `{name}` is this package imported by name, which a shipped folder does not have; use "
                "`from .module import name`.")  # fmt: skip


@pytest.mark.parametrize("module", MODULES)
def test_imports_only_what_a_machine_without_sculpt_has(module):
    """Rule 3: no `training` (inference never depends on training) and nothing beyond the standard library and the
    libraries diffusers itself needs."""
    for node, _ in imports(module):
        if isinstance(node, ast.ImportFrom) and node.level:
            continue
        names = [node.module] if isinstance(node, ast.ImportFrom) else [alias.name for alias in node.names]
        for name in names:
            root = name.split(".")[0]
            assert root != "training", f"pipelines/{module}.py:{node.lineno}: imports `{name}`; pipelines never " \
                                       "import training."
            allowed = ALLOWED_THIRD_PARTY | EXTRA_THIRD_PARTY.get(module, set())
            assert root in sys.stdlib_module_names or root in allowed or root == "__future__", (
                f"pipelines/{module}.py:{node.lineno}: imports `{name}`, which a folder loaded without sculpt may "
                f"not have (allowed: the standard library, {', '.join(sorted(allowed))}).")  # fmt: skip


@pytest.mark.parametrize("module", MODULES)
def test_every_module_inlines_into_one_file(module):
    """Rule 2 (and no cycles): what `save_pretrained` ships for the module compiles, so no name is bound differently
    in two of the modules it pulls in (`module_source` raises naming both)."""
    importlib.import_module(f"pipelines.{module}")
    source = module_source(f"pipelines.{module}")
    compile(source, f"{module}.py (shipped)", "exec")
    left = [line for line in source.splitlines() if line.startswith("from .")]
    assert not left, f"the shipped {module}.py still imports relatively: {left}"


def test_module_source_names_a_conflicting_definition(tmp_path, monkeypatch):
    """The check behind rule 2: two inlined modules binding one name differently is refused, naming both files."""
    package = tmp_path / "shippedpkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("SIZE = 1\n")
    (package / "b.py").write_text("SIZE = 2\n")
    (package / "main.py").write_text("from .a import SIZE\nfrom .b import SIZE as OTHER\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.import_module("shippedpkg.main")
    with pytest.raises(RuntimeError, match=r"`SIZE` is defined differently in a\.py and b\.py"):
        module_source("shippedpkg.main")
