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
from eager.nn.batchnorm import BatchNorm1d, BatchNorm2d
from eager.nn.containers import ModuleDict, ModuleList, Sequential
from eager.nn.convolution import Conv1d, Conv2d, ConvTranspose1d, ConvTranspose2d
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
from eager.nn.pooling import AdaptiveAvgPool1d, AdaptiveAvgPool2d, AvgPool1d, AvgPool2d, MaxPool1d, MaxPool2d

__all__ = ["AdaptiveAvgPool1d", "AdaptiveAvgPool2d", "AvgPool1d", "AvgPool2d", "BCELoss", "BCEWithLogitsLoss",
           "BatchNorm1d", "BatchNorm2d", "Conv1d", "Conv2d", "ConvTranspose1d", "ConvTranspose2d", "CrossEntropyLoss",
           "Dropout", "Embedding", "Flatten", "GELU", "Identity", "IncompatibleKeys", "LayerNorm", "LeakyReLU",
           "Linear", "LogSoftmax", "MSELoss", "MaxPool1d", "MaxPool2d", "Module", "ModuleDict", "ModuleList",
           "NLLLoss", "Parameter", "ReLU", "Sequential", "SiLU", "Sigmoid", "Softmax", "StateDictError", "Tanh",
           "functional", "init", "utils"]
