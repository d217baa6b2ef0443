"""Ray-free training code: configs, data, models, losses, training loops and metrics."""
