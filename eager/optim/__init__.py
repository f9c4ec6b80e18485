"""``eager.optim``: SGD, Adam and AdamW, written with eager ops under ``no_grad`` so a tracer records updates, and
``eager.optim.lr_scheduler``.

    >>> import eager
    >>> from eager import nn, optim
    >>> model = nn.Linear(2, 1)
    >>> opt = optim.Adam(model.parameters(), lr=1e-2)
    >>> model(eager.ones(4, 2)).pow(2).mean().backward()
    >>> opt.step(); opt.zero_grad()
    >>> model.weight.grad is None
    True
"""

from eager.optim import lr_scheduler
from eager.optim.adam import Adam, AdamW
from eager.optim.optimizer import Optimizer
from eager.optim.sgd import SGD

__all__ = ["SGD", "Adam", "AdamW", "Optimizer", "lr_scheduler"]
