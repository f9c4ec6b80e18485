"""``eager.utils``: ``eager.utils.data`` (Dataset, TensorDataset, DataLoader), as ``torch.utils``.

    >>> import eager
    >>> len(eager.utils.data.TensorDataset(eager.zeros(5, 2)))
    5
"""

from eager.utils import data

__all__ = ["data"]
