"""tracer: record one eager run into a static graph, replay it without Python, and say what it froze.

    >>> import eager
    >>> import tracer
    >>> traced = tracer.trace(lambda x: x.exp().sum(), eager.ones(3))
    >>> round(traced(eager.zeros(3)).item(), 4)
    3.0

What a trace does (``tracer.trace(fn_or_module, *example_inputs, strict=False, lower=None, cache_size=8,
guards="retrace")``):

- runs ``fn`` once through the eager engine with a recorder on ``apply`` and builds an SSA ``Graph``
  (``tracer.ir``): call arguments become ``input`` placeholders, module parameters and buffers ``param``
  placeholders named by their state_dict names, optimizer state / ``.grad`` / trainable or mutated tensors
  ``state`` placeholders, other tensors from outside ``constant`` nodes;
- **tracing has no side effects**: every tensor, ``.grad``, optimizer-state entry, Python attribute and random
  generator is restored after the tracing run, so N calls of a traced training step == N eager steps. When
  the run creates state (``.grad``, Adam's moments on the first step) a second run from the state the first
  left is recorded too, so call 1 and calls 2..N each run the program eager would;
- in-place updates of parameters and state become ``graph.updates``; values that land in ``.grad`` or in
  optimizer state are extra outputs; ``Traced`` writes both back after each call;
- every escape of a tensor value (``bool``, ``float``, ``.item()``, ``.tolist()``, ``.numpy()``, boolean masks)
  and every Python attribute changed while tracing (``self.counter += 1``) is an ``Assumption`` with its source
  line and value, and a ``TracerWarning`` is emitted once per site; ``traced.check(*inputs)`` runs eager and
  traced side by side and names the first diverging node and the assumption that broke;
- guards (``guards="retrace"``, the default): every frozen value that may have decided control flow or been
  baked in is checked on each call (escaped tensor values are extra graph outputs, compared after the call;
  changed Python state is compared on entry and written back after it); a failed guard runs the program traced
  for that outcome or retraces (bounded by ``cache_size`` per signature, then the call runs eagerly with a
  logged warning), so a call returns what eager would; values only returned or logged (``return loss.item()``,
  ``print(loss.item())``) are not guarded. ``guards="raise"`` raises ``GuardError`` naming the line;
  ``guards="off"`` replays the frozen program. Counted in ``retrace_count``, ``guard_failures`` and
  ``eager_fallbacks``;
- a call with a new signature (shapes, dtypes, device, non-tensor arguments) retraces into an LRU cache
  (logged on ``graphduel.tracer`` with the argument that changed); ``strict=True`` raises ``SignatureError``.
  Python scalars the run did not change (``module.training``, an optimizer's ``lr``) and the layout of touched
  state are guarded too: changing them between calls retraces;
- calls run the static executor (generated Python source over primitive impls; ``traced.code``), or the
  executable returned by ``lower(graph)`` (contract: ``executable.run(arrays) -> arrays``, one array per
  placeholder in ``graph.placeholders`` order in, ``graph.outputs`` then the new values of ``graph.updates``
  out).

Outputs of a traced call carry no autograd history; ``tracer.grad`` derives a static backward graph instead.
"""

from tracer.assumptions import Assumption, GuardError, TracerWarning
from tracer.check import CheckReport, Divergence
from tracer.executor import ExecutionError, Interpreter, StaticExecutor, default_lower
from tracer.grad import grad
from tracer.ir import Graph, GraphError, Node
from tracer.script import script
from tracer.serialization import FormatError, LoadedGraph, load
from tracer.signature import SignatureError
from tracer.traced import Traced, trace

__all__ = ["Assumption", "CheckReport", "Divergence", "ExecutionError", "FormatError", "Graph", "GraphError",
           "GuardError", "Interpreter", "LoadedGraph", "Node", "SignatureError", "StaticExecutor", "Traced",
           "TracerWarning", "default_lower", "grad", "load", "script", "trace"]
