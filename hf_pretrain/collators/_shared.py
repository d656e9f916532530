"""Collator parameters that a training loop changes while DataLoader workers run (the masking rate, the epoch).

Each is a property over the dataclass field of the same name, stored in a 0-d shared-memory tensor: set in the main
process (a callback), read by every worker at its next batch.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch


def shared_scalar(name: str, dtype: torch.dtype, convert: Callable[[object], float | int]) -> property:
    """A dataclass-field property stored in a 0-d shared-memory tensor.

    DataLoader workers receive the collator by fork (same pages) or by pickling through torch.multiprocessing,
    which sends shared tensors as handles to the same storage; either way a value set in the main process is what
    the workers read at their next batch.
    """
    slot = f"_{name}_shared"

    def get(self):
        return self.__dict__[slot].item()

    def set_(self, value):
        value = convert(value)
        store = self.__dict__.get(slot)
        if store is None:
            self.__dict__[slot] = torch.tensor(value, dtype=dtype).share_memory_()
        else:
            store.fill_(value)

    return property(get, set_, doc=f"`{name}`, kept in shared memory so DataLoader workers see changes.")


def epoch_value(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
        raise ValueError(f"epoch must be a non-negative int, got {value!r}.")
    return int(value)
