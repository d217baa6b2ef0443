"""What runs in the driver process: loading a search-space file, the cluster checks, a sweep from
preparation to its registered winner (`run_sweep`), the final evaluation, and resuming."""
