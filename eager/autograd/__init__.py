"""Autograd: the graph engine, user entry points, custom Functions, gradient checking, anomaly mode."""

from eager.autograd.engine import AnomalyError, BackwardError, Node
from eager.autograd.function import Function, FunctionCtx
from eager.autograd.functional import backward, grad
from eager.autograd.gradcheck import GradcheckError, gradcheck
from eager.autograd.mode import detect_anomaly, enable_grad, is_grad_enabled, no_grad, set_grad_enabled

__all__ = ["AnomalyError", "BackwardError", "Function", "FunctionCtx", "GradcheckError", "Node", "backward",
           "detect_anomaly", "enable_grad", "grad", "gradcheck", "is_grad_enabled", "no_grad",
           "set_grad_enabled"]
