"""The kinds of trial a Sweep runs, found by the type of its config (see base.Task)."""
from sweeper.tasks.base import Inputs, Task


def task_for(config) -> Task:
    # Imported here: each task pulls in its own trainables (and torch) only when a sweep needs it.
    from sweeper.tasks.classifier import CLASSIFIER
    from sweeper.tasks.gan import GAN

    for task in (GAN, CLASSIFIER):
        if isinstance(config, task.config_type):
            return task
    return Task()


__all__ = ["Task", "Inputs", "task_for"]
