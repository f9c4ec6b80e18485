"""A user's model: a small MLP classifier and its SGD train step, written with graphduel's eager API as one
writes them in PyTorch (``import eager as torch`` ports the other way). ``test_tiny_classifier.py`` is its test.
"""

from __future__ import annotations

import numpy as np

import eager
from eager import nn
from eager.nn import functional as F

D_IN, HIDDEN, CLASSES, BATCH = 64, 128, 10, 32


class TinyClassifier(nn.Module):
    def __init__(self, d_in: int = D_IN, hidden: int = HIDDEN, classes: int = CLASSES):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, classes)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


def make_train_step(lr: float = 0.05):
    """A fresh model, its optimizer and the step that trains it: ``(step, model)``."""
    model = TinyClassifier()
    opt = eager.optim.SGD(model.parameters(), lr=lr, momentum=0.9)

    def step(x, y):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss
    return step, model


def batch(seed: int = 0):
    """One batch of inputs and integer labels."""
    rng = np.random.default_rng(seed)
    x = eager.tensor(rng.standard_normal((BATCH, D_IN)).astype(np.float32))
    y = eager.tensor(rng.integers(0, CLASSES, BATCH))
    return x, y
