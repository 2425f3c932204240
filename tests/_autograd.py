"""What autograd keeps for a backward pass, measured with torch's saved-tensor hooks
(tests/test_lean_layers.py, tests/test_memory.py)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def kept_storages(model) -> Iterator[dict[int, int]]:
    """Inside the block, every tensor autograd saves is recorded as storage pointer ->
    bytes, once per storage, the model's parameters excluded; sum the values after it."""
    import torch

    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            kept[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        yield kept
