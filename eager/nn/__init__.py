"""``eager.nn``: Module, Parameter, layers, containers and losses (PyTorch's names and semantics).

    >>> import eager
    >>> from eager import nn
    >>> model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 1))
    >>> loss = nn.MSELoss()(model(eager.randn(4, 3)), eager.zeros(4, 1))
    >>> loss.backward()
    >>> [tuple(p.grad.shape) for p in model.parameters()]
    [(8, 3), (8,), (1, 8), (1,)]
"""

from eager.nn import functional, init, utils
from eager.nn.containers import ModuleDict, ModuleList, Sequential
from eager.nn.layers import (
    GELU,
    Dropout,
    Embedding,
    Flatten,
    Identity,
    LayerNorm,
    LeakyReLU,
    Linear,
    LogSoftmax,
    ReLU,
    Sigmoid,
    SiLU,
    Softmax,
    Tanh,
)
from eager.nn.loss import BCELoss, BCEWithLogitsLoss, CrossEntropyLoss, MSELoss, NLLLoss
from eager.nn.module import IncompatibleKeys, Module, Parameter, StateDictError

__all__ = ["BCELoss", "BCEWithLogitsLoss", "CrossEntropyLoss", "Dropout", "Embedding", "Flatten", "GELU",
           "Identity", "IncompatibleKeys", "LayerNorm", "LeakyReLU", "Linear", "LogSoftmax", "MSELoss",
           "Module", "ModuleDict", "ModuleList", "NLLLoss", "Parameter", "ReLU", "Sequential", "SiLU", "Sigmoid",
           "Softmax", "StateDictError", "Tanh", "functional", "init", "utils"]
