"""The errors sculpt's training side raises for people, in one module that every other one imports (none of them
imports another module for its error classes).

Two kinds, which the command line reports differently (training/cli.py):
    bad input   ValueError, FileNotFoundError, NotADirectoryError or `UsageError`: the user must change what they
                asked for; one line, exit code 2, before any work.
    a stop      `TrainingError` and its subclasses: training ran and stopped for a reason its message explains,
                with what was kept and how to go on; one line, exit code 1.
"""

from __future__ import annotations


class UsageError(Exception):
    """A problem with what the user asked for (a launch that does not match the config); one line, exit code 2."""


class TrainingError(RuntimeError):
    """Training stopped for a reason its message explains, with what was kept and how to go on; one line, exit 1."""


class NonFiniteLossError(TrainingError):
    """A NaN/Inf loss or gradient stopped the run (`non_finite_loss`); the last good checkpoint is untouched."""


class CheckpointWriteError(TrainingError):
    """A checkpoint could not be written (a full disk); the previous checkpoints are intact."""


class CacheDamagedError(TrainingError):
    """A shard of the disk latent cache changed after it was written (training/latent_cache.py); rebuild it."""


class PushError(TrainingError):
    """The Hub or the network refused a push; the message says why. The local folder is unchanged."""


USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, UsageError)
