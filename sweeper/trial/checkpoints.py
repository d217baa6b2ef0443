"""The checkpoints a trial keeps and goes on from."""
from __future__ import annotations

import logging
import posixpath

import pyarrow.fs
from ray import tune
from ray.tune.trainable import wrap_function

from sweeper.compat import restore_target, with_restore_target

log = logging.getLogger("sweeper")


def surviving_checkpoint(checkpoint: tune.Checkpoint | None) -> tune.Checkpoint | None:
    """The checkpoint Tune names for a restarted trial, or, where that one is gone, the trial's newest
    checkpoint left (None: none is, and the trial starts over).

    Tune deletes a checkpoint that falls out of `num_to_keep` the moment the next one registers,
    and saves its experiment state afterwards: a driver killed in between leaves a state naming a
    deleted checkpoint (seen in CI), and every retry of that trial would fail on it."""
    if checkpoint is None:
        return None
    fs = checkpoint.filesystem
    if fs.get_file_info(checkpoint.path).type == pyarrow.fs.FileType.Directory:
        return checkpoint
    trial_dir = posixpath.dirname(checkpoint.path.rstrip("/"))
    left = sorted(info.path for info in fs.get_file_info(pyarrow.fs.FileSelector(trial_dir, allow_not_found=True))
                  if info.type == pyarrow.fs.FileType.Directory and info.base_name.startswith("checkpoint_"))
    log.warning("checkpoint %s is gone (deleted by Tune before a killed driver saved its state); %s",
                checkpoint.path, f"resuming from {left[-1]}" if left else "the trial starts over")
    return tune.Checkpoint(left[-1], filesystem=fs) if left else None  # checkpoint_NNNNNN: zero-padded
def resuming_from_what_survives(trainable) -> type:
    """Tune's class for the function `trainable` (as `tune.with_parameters` returns it), restoring a
    trial from `surviving_checkpoint` of the one Tune names: Ray's `Trainable.restore` refuses a
    checkpoint that is gone before the trial's function could choose another."""
    base = wrap_function(trainable)

    class Resuming(base):
        def restore(self, checkpoint_path):
            named = restore_target(checkpoint_path)
            if named is None:
                return super().restore(checkpoint_path)
            left = surviving_checkpoint(named)
            if left is None:  # none left: the trial starts over
                return None
            return super().restore(with_restore_target(checkpoint_path, left))

    return Resuming
