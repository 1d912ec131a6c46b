"""Optimizer-step timestamps for the side-by-side benchmark, the same for every tool it launches.

Python imports `sitecustomize` at start-up from the first folder on sys.path that has one; the benchmark puts this
folder first on PYTHONPATH of the trainers it launches (never its own), with SCULPT_BENCH_STAMPS naming a folder.
Every process that then runs an optimizer step writes SCULPT_BENCH_STAMPS/stamps-<pid>.txt:

    start <rank> <world size> <time.time() at interpreter start>
    step <time.perf_counter()> <time.time()>        (one line per optimizer step, written after the step)
    end <peak RSS KiB> <peak CUDA bytes allocated> <peak CUDA bytes reserved>   (at exit)

torch is not imported here: the hook is registered the moment the trainer's own `import torch` loads
torch.optim.optimizer (a torch-wide post-hook, `register_optimizer_step_post_hook`, which AdamW, accelerate's
wrapped optimizer and any other torch optimizer run after `step()`), so start-up and import order stay the tool's own.
A process that never steps (the `accelerate launch` parent) writes nothing.
"""

import atexit
import importlib.abc
import importlib.machinery
import os
import sys
import time

_FOLDER = os.environ.get("SCULPT_BENCH_STAMPS")
_STARTED = time.time()
_file = None


def _on_step(optimizer, args, kwargs):
    global _file
    if _file is None:
        import torch.distributed as dist

        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        rank = dist.get_rank() if world > 1 else 0
        _file = open(os.path.join(_FOLDER, f"stamps-{os.getpid()}.txt"), "a", buffering=1)
        _file.write(f"start {rank} {world} {_STARTED:.6f}\n")
        atexit.register(_on_exit)
    _file.write(f"step {time.perf_counter():.6f} {time.time():.6f}\n")


def _on_exit():
    import resource

    torch = sys.modules.get("torch")
    allocated = reserved = 0
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        allocated, reserved = torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved()
    _file.write(f"end {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss} {allocated} {reserved}\n")
    _file.close()


class _HookWhenLoaded(importlib.abc.MetaPathFinder):
    """Finds torch.optim.optimizer like the normal path finder, and registers the hook right after it runs."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "torch.optim.optimizer":
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_hook(module):
            exec_module(module)
            module.register_optimizer_step_post_hook(_on_step)

        spec.loader.exec_module = exec_and_hook
        sys.meta_path.remove(self)
        return spec


if _FOLDER:
    sys.meta_path.insert(0, _HookWhenLoaded())
