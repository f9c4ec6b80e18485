"""Where traced code keeps state between calls, and how a trace leaves no trace: an index of the modules.

- ``tracer.slots``: ``Slot``, a named path to one location (``model.fc1.weight.grad``), resolved on every call;
  ``layout_of``, what a guard compares at a slot;
- ``tracer.roots``: closure walking, the modules, optimizers and tensors a function reaches;
- ``tracer.world``: ``World``, everything reachable from a traced function, each tensor named;
- ``tracer.snapshot``: ``Snapshot``, saving and restoring what a run may change;
- ``tracer.rng``: the random generators' state.

The names below are re-exported so ``from tracer.state import Slot, World, ...`` keeps working.

    >>> import eager
    >>> from eager import nn
    >>> world = World.discover(nn.Linear(2, 1), ())
    >>> sorted(k.name for k in world.known.values())
    ['bias', 'weight']
"""

from tracer.rng import RngState, rng_state, set_rng_state
from tracer.roots import Root, function_roots, is_module, is_optimizer
from tracer.slots import FETCH_ERRORS, MISSING, Slot, chain, describe_layout, item_lookup, layout_of
from tracer.snapshot import SavedTensor, Snapshot
from tracer.world import PY_SCALARS, Known, PyState, World, is_py_state

__all__ = ["FETCH_ERRORS", "MISSING", "PY_SCALARS", "Known", "PyState", "RngState", "Root", "SavedTensor", "Slot",
           "Snapshot", "World", "chain", "describe_layout", "function_roots", "is_module", "is_optimizer",
           "is_py_state", "item_lookup", "layout_of", "rng_state", "set_rng_state"]
