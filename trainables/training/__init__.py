"""Training loops; each takes a `report(metrics, checkpoint_dir)` callable and knows nothing of Ray."""
