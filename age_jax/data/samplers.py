"""Index samplers: the order in which training records are visited, as a grain MapDataset.

A sampler is an endless MapDataset of record indices whose element i depends only on
(seed, i), so the data order is deterministic, shardable by position and resumable by step.
"""
import grain
import numpy as np

SAMPLERS = ("shuffle",)


def index_sampler(name: str, labels: dict[str, np.ndarray], num_records: int, seed: int) -> grain.MapDataset:
  if num_records <= 0:
    raise ValueError("the training split is empty")
  if name == "shuffle":
    # A fresh permutation every epoch.
    return grain.MapDataset.range(num_records).shuffle(seed=seed).repeat()
  raise ValueError(f"config.data.sampler={name!r}; known samplers: {list(SAMPLERS)}")
