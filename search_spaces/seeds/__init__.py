"""The five seed projects this product grew from, one search-space file each (see the README's table).

Each file holds its project's published configuration as `published` (a GANConfig, or a dict of
them for seed 004), runs it as the sweep's first trial (a warm start) and searches its knobs around
it. The general sweeps in search_spaces/ import `published` to warm-start from these baselines.
"""
