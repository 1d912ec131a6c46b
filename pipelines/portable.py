"""Portable pipeline folders: the code of a pipeline and of its custom components travels inside the folder that
`save_pretrained` writes, in diffusers' custom-code layout, so that where sculpt is not installed

    DiffusionPipeline.from_pretrained(folder_or_repo_id, trust_remote_code=True)

loads the folder with nothing but torch, diffusers and transformers. The layout is the one diffusers' loader reads
(`diffusers/pipelines/pipeline_loading_utils.py`: `_resolve_custom_pipeline_and_cls` for the pipeline,
`get_class_obj_and_candidates` for a component):

    model_index.json                "_class_name": ["pipeline_latent_diffusion", "LatentDiffusionPipeline"]
                                    "scheduler": ["scheduling_ddpm", "DDPMScheduler"]
    pipeline_latent_diffusion.py    the pipeline's module, with every module it imports relatively inlined
    scheduler/scheduling_ddpm.py    the component's module

What diffusers does not do, and this module does:
    - `save_pretrained` writes `_class_name` as a bare class name and a component defined outside diffusers /
      transformers under its full module path (`pipelines.scheduling_ddpm`, or `diffusers_modules.local.
      scheduling_ddpm` for a class that was itself loaded as remote code), and copies no code. `save_code` copies the
      code and writes the (file, class) pairs above, whichever way the pipeline was loaded.
    - diffusers downloads the pipeline file of a Hub repo but not the files it imports relatively, so the pipeline
      file is made self-contained (`module_source`) rather than shipped as several files.
    - `SomePipeline.from_pretrained(folder)` on such a folder still runs the folder's code (and so refuses without
      `trust_remote_code`) even though the class was named. `config_for_class` / `installed_components` let a
      pipeline class that is installed load with its own code, and run none from the folder.

`PortableFolderMixin` gives the pipelines `save_pretrained` / `push_to_hub` / `from_pretrained` that do all this, and
that load weights from safetensors only unless the caller opts in.

This file is shipped too (inlined into every pipeline file), so it imports only the standard library and diffusers.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from diffusers.pipelines.pipeline_loading_utils import LOADABLE_CLASSES
from diffusers.utils.constants import DIFFUSERS_DYNAMIC_MODULE_NAME

from .loading import folder_pickle_only

# First line of every file `save_code` writes: marks it as a copy (so a stale one may be removed) and says where
# the source lives.
SHIPPED_CODE_MARKER = "# sculpt: shipped code"


def _file_stem(module_name: str) -> str:
    return module_name.rpartition(".")[2]


def _is_custom_library(library: str | None) -> bool:
    """Whether a model_index.json library entry names code of its own rather than diffusers / transformers / a
    diffusers pipeline module (those resolve on any installation)."""
    if not library or library in LOADABLE_CLASSES:
        return False
    from diffusers import pipelines

    return not hasattr(pipelines, library)


# ---------------------------------------------------------------------------------------------------------------------
# One self-contained source file per module
# ---------------------------------------------------------------------------------------------------------------------
def _is_relative_import(node: ast.stmt) -> bool:
    return isinstance(node, ast.ImportFrom) and node.level > 0


def _is_future_import(node: ast.stmt) -> bool:
    return isinstance(node, ast.ImportFrom) and node.module == "__future__"


def _collect(path: Path, parts: list[tuple[Path, str, ast.Module]], visiting: set[Path]) -> None:
    """`path` and the modules it imports relatively (`from .x import y`), dependencies first."""
    if path in visiting:
        raise RuntimeError(f"{path.name}: relative imports form a cycle; the shipped file cannot be linearised.")
    if any(done == path for done, _, _ in parts):
        return
    visiting.add(path)
    text = path.read_text(encoding="utf-8")
    tree = ast.parse(text, filename=str(path))
    for node in tree.body:
        if _is_relative_import(node):
            if node.level != 1 or not node.module:
                raise RuntimeError(f"{path.name}: only `from .module import name` can be inlined (level {node.level}).")
            _collect(path.with_name(f"{node.module}.py"), parts, visiting)
    visiting.discard(path)
    parts.append((path, text, tree))


def _top_level_names(text: str, tree: ast.Module) -> dict[str, str]:
    """Names a module binds at top level (functions, classes, assignments) and the source that binds them."""
    lines = text.splitlines()

    def source(node: ast.stmt) -> str:  # ast.get_source_segment, without rescanning the file for every node
        last = lines[node.end_lineno - 1].encode("utf-8")[: node.end_col_offset].decode("utf-8")
        return "\n".join([*lines[node.lineno - 1 : node.end_lineno - 1], last])[node.col_offset :]

    names = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names[node.name] = source(node)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name):
                    names[target.id] = source(node)
    return names


def module_source(module_name: str) -> str:
    """The source of an imported module as one file: the modules it imports relatively are inlined before it, in
    dependency order, and the relative imports removed (an `as` alias becomes an assignment). A module without
    relative imports (ours from a shipped folder, or the scheduler) is returned as it is, with the marker line."""
    path = Path(sys.modules[module_name].__file__)
    parts: list[tuple[Path, str, ast.Module]] = []
    _collect(path, parts, set())
    if len(parts) == 1:
        text = parts[0][1]
        if text.startswith(SHIPPED_CODE_MARKER):
            return text
        return f"{SHIPPED_CODE_MARKER}, a copy of {path.name} written by save_pretrained.\n{text}"

    # Inlined modules share one namespace: a name bound differently by two of them would silently change meaning.
    bound: dict[str, tuple[str, str]] = {}
    for part_path, text, tree in parts:
        for name, source in _top_level_names(text, tree).items():
            if name in bound and bound[name][1] != source:
                raise RuntimeError(
                    f"`{name}` is defined differently in {bound[name][0]} and {part_path.name}; rename one so that "
                    "they can be inlined into one shipped file."
                )
            bound.setdefault(name, (part_path.name, source))

    names = ", ".join(p.name for p, _, _ in parts)
    out = [
        f"{SHIPPED_CODE_MARKER}, written by save_pretrained from {names} (inlined in that order): one file,",
        "# because diffusers downloads a repo's pipeline file but not the files it imports. Edit those sources.",
    ]
    if any(_is_future_import(node) for _, _, tree in parts for node in tree.body):
        out.append("from __future__ import annotations")
    for part_path, text, tree in parts:
        lines = text.splitlines()
        replaced: dict[int, list[str]] = {}  # first line index → replacement lines; other lines of the node dropped
        dropped: set[int] = set()
        for node in tree.body:
            if _is_relative_import(node) or _is_future_import(node):
                span = range(node.lineno - 1, node.end_lineno)
                dropped.update(span)
                replaced[span[0]] = [
                    f"{alias.asname} = {alias.name}" for alias in getattr(node, "names", ()) if alias.asname
                ] if _is_relative_import(node) else []
        out += ["", "", f"# ---- {part_path.name} " + "-" * (113 - len(part_path.name))]
        for index, line in enumerate(lines):
            if index in replaced:
                out += replaced[index]
            elif index not in dropped:
                out.append(line)
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------------------------------
# Saving: write the code and the (file, class) entries
# ---------------------------------------------------------------------------------------------------------------------
def _write_code(folder: Path, module_name: str, keep_stem: str) -> None:
    """Write `module_name`'s shipped source into `folder`, and remove the copies an earlier save left there under
    another name (a swapped-out scheduler's, another pipeline class's): files with the marker line only."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{keep_stem}.py").write_text(module_source(module_name), encoding="utf-8")
    for stale in folder.glob("*.py"):
        if stale.stem != keep_stem and stale.read_text(encoding="utf-8").startswith(SHIPPED_CODE_MARKER):
            stale.unlink()


def save_code(pipeline: Any, save_directory: str | Path) -> None:
    """Make the folder diffusers' `save_pretrained` just wrote self-contained: the pipeline's code at its root and
    each custom component's code in the component's folder, referenced by (file, class) in model_index.json, and the
    demo `app.py` (`save_app`).
    model_index.json is rewritten last, so a failure before leaves the folder as diffusers wrote it."""
    save_directory = Path(save_directory)
    index_path = save_directory / "model_index.json"
    index = json.loads(index_path.read_text(encoding="utf-8"))

    index.pop("_name_or_path", None)  # where it was loaded from: a local path, meaningless (and private) elsewhere
    pipeline_module = type(pipeline).__module__
    _write_code(save_directory, pipeline_module, _file_stem(pipeline_module))
    save_app(pipeline, save_directory)
    index["_class_name"] = [_file_stem(pipeline_module), type(pipeline).__name__]

    for name, entry in index.items():
        if name.startswith("_") or not isinstance(entry, list) or len(entry) != 2:
            continue
        library, class_name = entry
        component = getattr(pipeline, name, None)
        if component is None or library is None:
            continue
        if _is_custom_library(library):
            module_name = type(component).__module__
            _write_code(save_directory / name, module_name, _file_stem(module_name))
            index[name] = [_file_stem(module_name), class_name]
        elif (save_directory / name).is_dir():  # e.g. DDPMScheduler swapped for DPMSolverMultistepScheduler
            for stale in (save_directory / name).glob("*.py"):
                if stale.read_text(encoding="utf-8").startswith(SHIPPED_CODE_MARKER):
                    stale.unlink()

    tmp = index_path.with_name(index_path.name + ".tmp")
    tmp.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(index_path)


def save_app(pipeline: Any, save_directory: str | Path) -> None:
    """The browser demo beside the pipeline's module (pipelines/app.py), self-contained, as `app.py` at the folder
    root, and the `requirements.txt` a Hugging Face Space (`sdk: gradio`) installs before running it. Skipped where
    there is no such module (a pipeline loaded as remote code)."""
    package = type(pipeline).__module__.rpartition(".")[0]
    if not _is_installed(type(pipeline)) or not _find_module(f"{package}.app"):
        return
    app = importlib.import_module(f"{package}.app").__name__
    (Path(save_directory) / "app.py").write_text(module_source(app), encoding="utf-8")
    requirements = Path(save_directory) / "requirements.txt"
    if not requirements.is_file() or requirements.read_text(encoding="utf-8").startswith(SHIPPED_CODE_MARKER):
        from importlib.metadata import version

        pins = [f"{name}>={version(name).split('+')[0]}" for name in ("torch", "diffusers", "transformers")]
        requirements.write_text(f"{SHIPPED_CODE_MARKER}: what app.py needs besides gradio (a Space installs it)\n"
                                + "\n".join(pins) + "\n", encoding="utf-8")  # fmt: skip


# Written into a card when a pipeline pushes itself (`save_pretrained(push_to_hub=True)`, `push_to_hub`) and the
# folder has no README.md yet; training writes a full card instead (training/hub.py).
USAGE = """Load it with diffusers alone: the pipeline and scheduler classes ship as code in this repository, so
`trust_remote_code=True` is needed (read the `.py` files first).

```python
from diffusers import DiffusionPipeline

pipe = DiffusionPipeline.from_pretrained("{repo_id}", trust_remote_code=True)
image = pipe("a prompt").images[0]
```"""


def push_saved_folder(pipeline: Any, save_directory: str | Path, repo_id: str, **kwargs) -> Any:
    """What diffusers' `save_pretrained(push_to_hub=True)` does, after `save_code`: create the repo, add a model card
    if the folder has none (the repo's own card if it has one, else one that says to pass `trust_remote_code`; an
    existing README.md, e.g. training's, is kept), upload the folder. Returns the commit info."""
    from diffusers.utils.hub_utils import load_or_create_model_card, populate_model_card
    from huggingface_hub import create_repo

    token = kwargs.get("token")
    repo_id = create_repo(repo_id, exist_ok=True, private=kwargs.get("private"), token=token).repo_id
    readme = Path(save_directory) / "README.md"
    if not readme.is_file():
        card = load_or_create_model_card(
            repo_id, token=token, is_pipeline=True, model_description=USAGE.format(repo_id=repo_id)
        )
        populate_model_card(card, tags=["text-to-image"]).save(readme)
    return pipeline._upload_folder(
        save_directory,
        repo_id,
        token=token,
        commit_message=kwargs.get("commit_message"),
        create_pr=kwargs.get("create_pr", False),
    )


# ---------------------------------------------------------------------------------------------------------------------
# Loading with an installed class: no code from the folder runs
# ---------------------------------------------------------------------------------------------------------------------
def _is_installed(cls: type) -> bool:
    """False for a class diffusers loaded as remote code (its module lives under `diffusers_modules`)."""
    package = cls.__module__.rpartition(".")[0]
    return bool(package) and package.split(".")[0] != DIFFUSERS_DYNAMIC_MODULE_NAME


def _find_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # the parent is a module, not a package
        return False


def config_for_class(cls: type, config: dict[str, Any]) -> dict[str, Any]:
    """model_index.json as `cls.from_pretrained` reads it: the pipeline is `cls`, not the class of the shipped
    file (diffusers would otherwise load that file, which needs `trust_remote_code`, whatever class was named)."""
    if isinstance(config.get("_class_name"), (list, tuple)):
        config = {**config, "_class_name": cls.__name__}
    return config


def installed_components(cls: type, init_dict: dict[str, Any]) -> dict[str, Any]:
    """Point each component that ships as code (`["scheduling_ddpm", "DDPMScheduler"]`) at the installed module
    beside `cls` that defines that class (`pipelines.scheduling_ddpm`), which diffusers then takes from
    `sys.modules`; entries with no installed counterpart, and every entry for a remote-code `cls`, stay as they are."""
    if not _is_installed(cls):
        return init_dict
    package = cls.__module__.rpartition(".")[0]
    resolved = {}
    for name, entry in init_dict.items():
        if isinstance(entry, (list, tuple)) and len(entry) == 2 and isinstance(entry[0], str):
            library, class_name = entry
            installed = f"{package}.{library}"
            if "." not in library and _is_custom_library(library) and _find_module(installed):
                if hasattr(importlib.import_module(installed), class_name):
                    entry = [installed, class_name]
        resolved[name] = entry
    return resolved


# ---------------------------------------------------------------------------------------------------------------------
# The pipelines' own saving and loading
# ---------------------------------------------------------------------------------------------------------------------
def _pickle_only_parts(folder: Path, variant: str | None = None) -> list[str]:
    """The components of a local pipeline folder (model_index.json's entries) whose weights for `variant` are
    pickles only (`loading.pickle_only`), each as its first pickle file: ["unet/diffusion_pytorch_model.bin", ...]."""
    index = folder / "model_index.json"
    if not index.is_file():
        return []
    components = [k for k, v in json.loads(index.read_text()).items() if not k.startswith("_") and isinstance(v, list)]
    found = []
    for part in sorted(folder / name for name in components if (folder / name).is_dir()):
        pickled = folder_pickle_only(part, variant)
        if pickled:
            found.append(f"{part.name}/{pickled[0]}")
    return found


class PortableFolderMixin:
    """`save_pretrained`, `push_to_hub` and `from_pretrained` of sculpt's pipelines, placed before `DiffusionPipeline`
    in their bases: a saved folder carries its code (`save_code`), and loading reads weights from safetensors only
    unless the caller opts in, and runs no code from the folder (`config_for_class`, `installed_components`)."""

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        safe_serialization: bool = True,
        variant: str | None = None,
        max_shard_size: int | str | None = None,
        push_to_hub: bool = False,
        **kwargs,
    ) -> None:
        """diffusers' `save_pretrained` (safetensors weights, configs), then the code the folder needs, so that
        `DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)` loads it where sculpt is not installed.

        With `push_to_hub`, the finished folder is uploaded afterwards (diffusers would upload it before the code is
        written); `repo_id` (default: the folder's name), `token`, `private`, `commit_message` and `create_pr` are
        diffusers' keyword arguments.
        """
        push_kwargs = {k: kwargs.pop(k) for k in ("repo_id", "token", "private", "commit_message", "create_pr")
                       if k in kwargs}  # fmt: skip
        super().save_pretrained(
            save_directory, safe_serialization=safe_serialization, variant=variant, max_shard_size=max_shard_size,
            **kwargs,
        )  # fmt: skip
        save_code(self, save_directory)
        if push_to_hub:
            repo_id = push_kwargs.pop("repo_id", Path(save_directory).name)
            push_saved_folder(self, save_directory, repo_id, **push_kwargs)

    def push_to_hub(
        self,
        repo_id: str,
        commit_message: str | None = None,
        private: bool | None = None,
        token: str | None = None,
        create_pr: bool = False,
        safe_serialization: bool = True,
        variant: str | None = None,
    ) -> Any:
        """diffusers' `push_to_hub` (save to a temporary folder, upload it), through our `save_pretrained`, so that
        what is uploaded is the self-contained folder with a card that says how to load it."""
        with tempfile.TemporaryDirectory() as folder:
            self.save_pretrained(folder, safe_serialization=safe_serialization, variant=variant)
            return push_saved_folder(
                self, folder, repo_id, token=token, private=private, commit_message=commit_message, create_pr=create_pr
            )

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> Any:
        """diffusers' `from_pretrained`, safe by default: weights load from safetensors only, and a folder whose
        weights are pickles (which can run code when loaded) is refused with a ValueError naming them. Pass
        `use_safetensors=False` to allow pickles for a source you trust (safetensors are still used where present).
        `trust_remote_code` is never set here: the installed classes load the folder, and diffusers refuses a
        component whose code exists only in the folder unless the caller passes it."""
        use_safetensors = kwargs.pop("use_safetensors", None)
        if use_safetensors is False:
            # diffusers and transformers read False as "pickles only", which fails on parts saved as safetensors;
            # None is "safetensors where present, else the pickle".
            return super().from_pretrained(pretrained_model_name_or_path, use_safetensors=None, **kwargs)
        folder = Path(pretrained_model_name_or_path).expanduser()
        if folder.is_dir():
            pickled = _pickle_only_parts(folder, kwargs.get("variant"))
            if pickled:
                raise ValueError(
                    f"`pretrained_model_name_or_path`: {str(pretrained_model_name_or_path)!r} holds weights only as "
                    f"pickle ({', '.join(pickled)}), which can run arbitrary code when loaded. Convert them to "
                    f"safetensors, or pass use_safetensors=False if you trust the folder."
                )
        try:
            return super().from_pretrained(pretrained_model_name_or_path, use_safetensors=True, **kwargs)
        except OSError as error:
            if "safetensors" not in str(error):
                raise
            raise ValueError(
                f"`pretrained_model_name_or_path`: {str(pretrained_model_name_or_path)!r} has no safetensors weights "
                f"for every part ({str(error).strip().splitlines()[0]}); pass use_safetensors=False to load pickled "
                f"weights if you trust the source."
            ) from error

    @classmethod
    def _dict_from_json_file(cls, json_file: str | os.PathLike) -> dict[str, Any]:
        # diffusers reads model_index.json through this in `from_pretrained` and `download`: loading with this
        # class uses this class, not the one the folder ships (which would need `trust_remote_code`).
        return config_for_class(cls, super()._dict_from_json_file(json_file))

    @classmethod
    def extract_init_dict(cls, config_dict: dict[str, Any], **kwargs):
        # `from_pretrained`'s component entries: an installed class loads our scheduler from the installed package.
        init_dict, unused_kwargs, hidden_dict = super().extract_init_dict(config_dict, **kwargs)
        return installed_components(cls, init_dict), unused_kwargs, hidden_dict
