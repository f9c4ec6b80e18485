"""Workloads: programs written once against the eager API, with their references and peers.

    >>> from compare import workloads
    >>> workloads.get("tanh_gelu").kind
    'forward'
    >>> "dynamic_net" in workloads.names()
    True

Add your own with :func:`workload` (a forward function) or :func:`program` (modules, optimizers, train steps);
see the README section "Adding a workload".
"""

from compare.workloads.registry import (
    REGISTRY,
    SIZES,
    JaxStep,
    Program,
    Workload,
    as_lib_tensor,
    get,
    load_params,
    param_state,
    program,
    workload,
)

# Importing registers; the order is the order reports list them in.
from compare.workloads import elementwise, attention, mlp, seeds, control  # noqa: E402, I001  isort: skip


def names() -> list[str]:
    """Names of all registered workloads, in registration order."""
    return list(REGISTRY)
