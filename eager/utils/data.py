"""``torch.utils.data`` for eager: ``Dataset``, ``TensorDataset``, ``Subset``, ``random_split``, ``DataLoader`` and
``default_collate``, with PyTorch's names and semantics.

Batches are drawn in the calling process (``num_workers=0``; more workers are refused with a clear error). Shuffling
draws a permutation from ``generator`` (an ``eager.Generator``) or from the default generator, so
``eager.manual_seed`` makes the order repeat; the orders are not PyTorch's own (its generator is another stream).
Loading a ``TensorDataset`` with the default collate indexes each tensor once per batch (``t[indices]``) instead of
stacking rows one by one: the same batch, without one op per sample.

    >>> import eager
    >>> from eager.utils.data import DataLoader, TensorDataset
    >>> ds = TensorDataset(eager.arange(10.0).reshape(5, 2), eager.arange(5))
    >>> [(x.shape, y.tolist()) for x, y in DataLoader(ds, batch_size=2)]
    [((2, 2), [0, 1]), ((2, 2), [2, 3]), ((1, 2), [4])]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from eager import backend
from eager.creation import randperm, tensor
from eager.ops import stack
from eager.random import Generator
from eager.tensor import Tensor


class Dataset:
    """A map-style dataset: subclass it and define ``__getitem__(index)`` and ``__len__()``."""

    def __getitem__(self, index):
        raise NotImplementedError(f"{type(self).__name__} has no __getitem__(); define it in the subclass.")

    def __add__(self, other: Dataset) -> ConcatDataset:
        return ConcatDataset([self, other])


class TensorDataset(Dataset):
    """Sample i is ``tuple(t[i] for t in tensors)``; every tensor has the same size in dim 0.

        >>> import eager
        >>> TensorDataset(eager.zeros(3, 2), eager.ones(3))[1]
        (tensor([0., 0.]), tensor(1.))
    """

    def __init__(self, *tensors: Tensor):
        if not tensors:
            raise ValueError("TensorDataset: give at least one tensor.")
        sizes = [t.shape[0] if isinstance(t, Tensor) and t.ndim else None for t in tensors]
        if None in sizes or len(set(sizes)) != 1:
            shapes = [list(getattr(t, "shape", [])) for t in tensors]
            raise ValueError(f"TensorDataset: size mismatch between tensors: every tensor must have the same size in "
                             f"dim 0 (the samples), got shapes {shapes}.")
        self.tensors = tensors

    def __getitem__(self, index):
        return tuple(t[index] for t in self.tensors)

    def __len__(self) -> int:
        return self.tensors[0].shape[0]


class ConcatDataset(Dataset):
    """The samples of several datasets one after another."""

    def __init__(self, datasets):
        self.datasets = list(datasets)
        if not self.datasets:
            raise ValueError("ConcatDataset: datasets should not be an empty iterable.")
        self.cumulative_sizes = list(np.cumsum([len(d) for d in self.datasets]))

    def __len__(self) -> int:
        return int(self.cumulative_sizes[-1])

    def __getitem__(self, index: int):
        index = _check_index(index, len(self))
        which = int(np.searchsorted(self.cumulative_sizes, index, side="right"))
        start = 0 if which == 0 else int(self.cumulative_sizes[which - 1])
        return self.datasets[which][index - start]


class Subset(Dataset):
    """The samples of ``dataset`` at ``indices``, in that order."""

    def __init__(self, dataset: Dataset, indices: Sequence[int]):
        self.dataset, self.indices = dataset, list(indices)

    def __getitem__(self, index):
        return self.dataset[self.indices[index]]

    def __len__(self) -> int:
        return len(self.indices)


def _check_index(index: int, n: int) -> int:
    if not -n <= index < n:
        raise IndexError(f"dataset index {index} is out of range for {n} samples.")
    return index % n


def random_split(dataset: Dataset, lengths: Sequence, generator: Generator | None = None) -> list[Subset]:
    """Split into non-overlapping random subsets of the given lengths (or fractions summing to 1, the remainder
    given round-robin, as PyTorch does)."""
    n = len(dataset)
    if math.isclose(sum(lengths), 1) and sum(lengths) <= 1:
        counts = [int(math.floor(n * f)) for f in lengths]
        for i in range(n - sum(counts)):
            counts[i % len(counts)] += 1
        lengths = counts
    if sum(lengths) != n:
        raise ValueError(f"random_split: the lengths {list(lengths)} sum to {sum(lengths)}, not to the dataset's "
                         f"length {n}.")
    order = randperm(n, generator=generator).tolist()
    out, start = [], 0
    for length in lengths:
        out.append(Subset(dataset, order[start:start + length]))
        start += length
    return out


# ---------------------------------------------------------------- collate


def default_collate(batch: list):
    """PyTorch's default collate: tensors and NumPy arrays are stacked along a new dim 0; Python floats become a
    float64 tensor, ints an int64 and bools a bool tensor; tuples, lists (and namedtuples) and dicts are collated
    field by field; strings are kept as a list.

        >>> import eager
        >>> out = default_collate([{"x": eager.zeros(2), "y": 1}, {"x": eager.ones(2), "y": 0}])
        >>> out["x"].shape, out["y"].tolist()
        ((2, 2), [1, 0])
    """
    first = batch[0]
    if isinstance(first, Tensor):
        return stack(batch, 0)
    if isinstance(first, np.ndarray):
        if first.dtype.kind not in "biuf":
            raise TypeError(f"default_collate: batch must contain tensors, NumPy arrays, numbers, dicts or lists; "
                            f"found a NumPy array of dtype {first.dtype}.")
        return tensor(np.stack(batch))
    if isinstance(first, np.generic):
        return tensor(np.array(batch))
    if isinstance(first, bool):
        return tensor(batch, dtype=backend.bool_)
    if isinstance(first, int):
        return tensor(batch, dtype=backend.int64)
    if isinstance(first, float):
        return tensor(batch, dtype=backend.float64)
    if isinstance(first, str):
        return list(batch)
    if isinstance(first, dict):
        return type(first)({k: default_collate([d[k] for d in batch]) for k in first})
    if isinstance(first, tuple) and hasattr(first, "_fields"):  # a namedtuple keeps its type
        return type(first)(*(default_collate(list(s)) for s in zip(*batch)))
    if isinstance(first, (tuple, list)):
        if any(len(s) != len(first) for s in batch):
            raise RuntimeError("default_collate: each element in list of batch should be of equal size.")
        return [default_collate(list(s)) for s in zip(*batch)]
    raise TypeError(f"default_collate: batch must contain tensors, NumPy arrays, numbers, dicts or lists; found "
                    f"{type(first).__name__}.")


# ---------------------------------------------------------------- samplers and the loader


class SequentialSampler:
    def __init__(self, data_source):
        self.data_source = data_source

    def __iter__(self) -> Iterator[int]:
        return iter(range(len(self.data_source)))

    def __len__(self) -> int:
        return len(self.data_source)


class RandomSampler:
    """A random order of the indices each epoch: a permutation from ``generator`` or the default generator."""

    def __init__(self, data_source, replacement: bool = False, num_samples: int | None = None,
                 generator: Generator | None = None):
        if replacement:
            raise NotImplementedError("RandomSampler: replacement=True is not implemented; draw indices with "
                                      "eager.randint and give them as a sampler.")
        self.data_source, self.generator = data_source, generator
        self._num_samples = num_samples

    @property
    def num_samples(self) -> int:
        return len(self.data_source) if self._num_samples is None else self._num_samples

    def __iter__(self) -> Iterator[int]:
        n = len(self.data_source)
        for start in range(0, self.num_samples, n):
            yield from randperm(n, generator=self.generator).tolist()[:self.num_samples - start]

    def __len__(self) -> int:
        return self.num_samples


class BatchSampler:
    """Groups the indices of ``sampler`` into lists of ``batch_size`` (the last one shorter unless ``drop_last``)."""

    def __init__(self, sampler, batch_size: int, drop_last: bool):
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size <= 0:
            raise ValueError(f"batch_size should be a positive integer value, but got batch_size={batch_size!r}.")
        self.sampler, self.batch_size, self.drop_last = sampler, batch_size, drop_last

    def __iter__(self) -> Iterator[list[int]]:
        batch: list[int] = []
        for i in self.sampler:
            batch.append(i)
            if len(batch) == self.batch_size:
                yield batch
                batch = []
        if batch and not self.drop_last:
            yield batch

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)


class DataLoader:
    """Batches of a dataset: ``batch_size`` samples (None: single samples, not collated into a batch), in order or
    shuffled (``shuffle=True``, a new permutation each epoch from ``generator`` or the default generator),
    ``drop_last`` dropping a short last batch, and ``collate_fn`` (default: ``default_collate``) combining samples.

        >>> import eager
        >>> loader = DataLoader(TensorDataset(eager.arange(6)), batch_size=4, shuffle=True, drop_last=True)
        >>> batches = [b.tolist() for (b,) in loader]
        >>> len(loader), len(batches), len(batches[0]), len(set(batches[0])) == 4
        (1, 1, 4, True)
    """

    def __init__(self, dataset, batch_size: int | None = 1, shuffle: bool | None = None, sampler=None,
                 batch_sampler=None, num_workers: int = 0, collate_fn: Callable | None = None,
                 pin_memory: bool = False, drop_last: bool = False, timeout: float = 0, worker_init_fn=None,
                 generator: Generator | None = None, **kwargs: Any):
        if num_workers:
            raise NotImplementedError(f"DataLoader: num_workers={num_workers} is not supported; batches are loaded "
                                      "in the calling process (num_workers=0).")
        if kwargs:
            raise TypeError(f"DataLoader: unexpected arguments {sorted(kwargs)}.")
        if sampler is not None and shuffle:
            raise ValueError("DataLoader: sampler option is mutually exclusive with shuffle.")
        if batch_sampler is not None and (batch_size != 1 or shuffle or sampler is not None or drop_last):
            raise ValueError("DataLoader: batch_sampler option is mutually exclusive with batch_size, shuffle, "
                             "sampler, and drop_last.")
        self.dataset, self.num_workers, self.pin_memory, self.timeout = dataset, num_workers, pin_memory, timeout
        self.generator, self.worker_init_fn = generator, worker_init_fn
        if sampler is None:
            sampler = RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)
        if batch_sampler is None and batch_size is not None:
            batch_sampler = BatchSampler(sampler, batch_size, drop_last)
        elif batch_sampler is not None:
            batch_size, drop_last = None, False
        self.sampler, self.batch_sampler = sampler, batch_sampler
        self.batch_size, self.drop_last = batch_size, drop_last
        self.collate_fn = collate_fn if collate_fn is not None else (
            default_collate if batch_sampler is not None else _no_collate)

    def __iter__(self) -> Iterator:
        if self.batch_sampler is None:
            for i in self.sampler:
                yield self.collate_fn(self.dataset[i])
            return
        for indices in self.batch_sampler:
            yield self._fetch(indices)

    def _fetch(self, indices: list[int]):
        ds = self.dataset
        if self.collate_fn is default_collate and type(ds) is TensorDataset:
            # one index op per tensor: equal to stacking ds[i] for each i, without an op per sample
            n = len(ds)
            if any(not -n <= i < n for i in indices):
                raise IndexError(f"DataLoader: an index in {indices} is out of range for {n} samples.")
            return [t[tensor(indices, dtype=backend.int64, device=t.device)] for t in ds.tensors]
        if hasattr(ds, "__getitems__"):
            return self.collate_fn(ds.__getitems__(indices))
        return self.collate_fn([ds[i] for i in indices])

    def __len__(self) -> int:
        return len(self.batch_sampler if self.batch_sampler is not None else self.sampler)


def _no_collate(sample):
    """``batch_size=None``: each sample as it is, NumPy arrays and numbers turned into tensors (default_convert)."""
    if isinstance(sample, np.ndarray) and sample.dtype.kind in "biuf":
        return tensor(sample)
    if isinstance(sample, (tuple, list)) and not isinstance(sample, str):
        return type(sample)(_no_collate(s) for s in sample) if not hasattr(sample, "_fields") else \
            type(sample)(*(_no_collate(s) for s in sample))
    if isinstance(sample, dict):
        return {k: _no_collate(v) for k, v in sample.items()}
    return sample
