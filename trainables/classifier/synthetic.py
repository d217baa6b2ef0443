"""Training images drawn from one generator per class: fresh draws every batch, or a fixed pool."""
from typing import Callable

import torch

from trainables.training.evaluate import to_uint8

POOL_CHUNK = 250  # generated images per forward pass while drawing a pool


class SyntheticImages:
    """Balanced, labelled batches of generated uint8 images on `device`.

    `generators` maps a class index to (generator, z_dim); a generator takes float32 z [n, z_dim] on
    the device and returns images in [-1, 1] of shape [n, 3, R, R]. Pass them ready for inference:
    they may be torch.export GraphModules, which have no eval(), so this class never switches modes.
    `per_class` 0 draws fresh images every batch; N > 0 draws a pool of N images per class here, once,
    and batches then sample from it. All randomness comes from a generator seeded with `seed`, so
    drawing never shifts the global RNG, and state_dict() lets a checkpoint continue the stream.
    """

    def __init__(self, generators: dict[int, tuple[Callable, int]], per_class: int, device, seed: int):
        self.generators = dict(sorted(generators.items()))
        self.classes = torch.tensor(list(self.generators), dtype=torch.int64, device=device)
        self.device = torch.device(device)
        self.rng = torch.Generator(device=self.device).manual_seed(seed)
        self.next_class = 0  # round-robin position, so the remainder of uneven batches rotates over classes
        self.pools = {c: self._draw(c, per_class) for c in self.generators} if per_class > 0 else None

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(uint8 images [n, 3, R, R], int64 labels [n]), grouped by class."""
        # Counted on the host, so a batch never waits for the device.
        k, start = len(self.classes), self.next_class
        counts = [n // k + ((j - start) % k < n % k) for j in range(k)]
        self.next_class = (start + n) % k
        labels = torch.repeat_interleave(self.classes, torch.tensor(counts, device=self.device), output_size=n)
        images = [self._sample(c, m) for c, m in zip(self.generators, counts) if m > 0]
        return torch.cat(images), labels

    def _sample(self, c: int, n: int) -> torch.Tensor:
        if self.pools is None:
            return self._draw(c, n)
        pool = self.pools[c]
        return pool[torch.randint(len(pool), (n,), device=self.device, generator=self.rng)]

    @torch.no_grad()
    def _draw(self, c: int, n: int) -> torch.Tensor:
        G, z_dim = self.generators[c]
        chunks = []
        for i in range(0, n, POOL_CHUNK):
            z = torch.randn(min(POOL_CHUNK, n - i), z_dim, device=self.device, generator=self.rng)
            chunks.append(to_uint8(G(z)))
        return torch.cat(chunks)

    def state_dict(self) -> dict:
        return {"rng": self.rng.get_state(), "next_class": self.next_class}

    def load_state_dict(self, state: dict) -> None:
        self.rng.set_state(state["rng"])
        self.next_class = state["next_class"]
