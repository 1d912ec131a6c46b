"""training/run.py, the run layer both stages share: a resumed run gets exactly the batches the uninterrupted run
would have had, from any step, in one process and in two (real `accelerate launch`, gloo)."""

from __future__ import annotations

import json
import subprocess
import textwrap

import pytest
from conftest import ROOT, accelerate_launch

# Runs under `accelerate launch`: for every resume step, the batches train_batches gives from there, per rank.
SCRIPT = textwrap.dedent('''
    import json, sys
    import torch
    from accelerate import Accelerator
    from training.data import EpochSampler
    from training.run import EpochPlan, train_batches

    class Numbers(torch.utils.data.Dataset):
        def __len__(self): return 20
        def __getitem__(self, i): return i
        def set_epoch(self, epoch): pass

    accelerator = Accelerator(cpu=True)
    dataset = Numbers()
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, sampler=EpochSampler(dataset, seed=3), drop_last=True)
    loader = accelerator.prepare(loader)
    max_steps, accumulation = 12, 1
    runs = {}
    for start in range(max_steps):
        plan = EpochPlan.make(len(loader), accumulation, max_steps, start)
        batches, step = [], start
        for micro_step, batch in train_batches(accelerator, loader, plan):
            batches.append([micro_step, batch.tolist()])
            step += 1
            if step >= max_steps:
                break
        runs[start] = batches
    with open(f"{sys.argv[1]}/rank{accelerator.process_index}.json", "w") as f:
        json.dump(runs, f)
''')


@pytest.mark.parametrize("num_processes", [1, 2])
def test_a_resume_from_any_step_gets_the_remaining_batches_of_the_uninterrupted_run(tmp_path, num_processes):
    """Each epoch has its own order; resuming at step k (possibly in a later epoch, mid-epoch) must give the batches
    the run from step 0 gave from its k-th on, with the same micro-steps. Under two processes this failed: the loader
    that skips the first batches did not pass the epoch on to the sampler, and replayed epoch 0's order."""
    (tmp_path / "script.py").write_text(SCRIPT)
    command = [*accelerate_launch(num_processes, port=29581), str(tmp_path / "script.py"), str(tmp_path)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    for rank in range(num_processes):
        runs = {int(k): v for k, v in json.loads((tmp_path / f"rank{rank}.json").read_text()).items()}
        full = runs[0]
        per_epoch = 20 // (2 * num_processes)
        assert len(full) == 12 and len({tuple(b) for _, b in full[:per_epoch]}) == per_epoch
        assert [b for _, b in full[:per_epoch]] != [b for _, b in full[per_epoch : 2 * per_epoch]]  # epochs differ
        for start, batches in runs.items():
            assert batches == full[start:], f"rank {rank}, resumed at step {start}"
