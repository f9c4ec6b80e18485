"""A step replayed on fixed buffers, the way a CUDA graph replays it (``compile(..., cuda_graph=True)``).

The executable is built with static pools (one buffer per returned value) and a memory plan that donates state
(``plan_memory(..., donate_state=True)``: a new parameter or optimizer moment is written over the old one).
Then a call is: copy each input into its static buffer, unless the caller passes that very buffer (the state
this replay returned last time); launch the step; return the new state as the static buffers themselves and
copy every other output. A training step thus costs its batch's copies, one launch and copies of its other
outputs (the loss, the gradients it leaves in ``.grad``): the MLP Adam step makes 2 + 5 copies per call, where
copying every input and output would make 18 + 21.

On cuda the launch is a captured CUDA graph. On the CPU (backend ``simt``) it runs the same steps again on the
same buffers, which is what the graph does, so the buffer logic is tested without a GPU.

State is updated in place (as PyTorch's optimizers do, unlike graphduel's eager optimizers, which rebind a
new array): an array of a parameter's old value taken before a step changes with the step.

    >>> import eager, compiler
    >>> w = eager.ones(4)
    >>> def step(x):
    ...     w.add_(x)
    ...     return w.sum()
    >>> f = compiler.compile(step, eager.ones(4), backend="simt", cuda_graph=True)
    >>> [float(f(eager.ones(4))) for _ in range(3)], w.tolist()
    ([8.0, 12.0, 16.0], [4.0, 4.0, 4.0, 4.0])
"""

from __future__ import annotations


class StaticReplay:
    """``capture(executable, static_inputs, write_back) -> launch``: ``launch()`` runs the step, then
    ``write_back(outputs)`` (captured with it on cuda), and returns what ``write_back`` returned."""

    def __init__(self, ex, capture):
        self.ex, self.capture = ex, capture
        graph, memory = ex.graph, ex.program.memory
        position = {p.id: k for k, p in enumerate(graph.placeholders)}
        n_out = len(graph.outputs)
        # (output position, input position, written over its input already) per state update
        # donated to *this* placeholder: a value that two state tensors take is written over one of them only
        self.state = [(n_out + j, position[p.id], memory.in_place.get(v.id) == p.id)
                      for j, (p, v) in enumerate(graph.updates)]
        self.is_state = [False] * n_out + [True] * len(graph.updates)
        self.static_inputs: list | None = None
        self.launch = None
        self.copies_in = 0  # inputs copied into static buffers: the batch each call, state never after the first

    def run(self, arrays: list) -> list:
        xp = self.ex.xp
        if self.static_inputs is None:
            # C order: the kernels read the static buffers themselves (a transposed state array copied as it is
            # would be made contiguous into a temporary each call, and the update written there, not here)
            self.static_inputs = [xp.array(a, copy=True, order="C") for a in arrays]
            self.launch = self.capture(self.ex, self.static_inputs, self.write_back)
            # capturing may have run the step (a warm-up that puts every buffer in place): start from the inputs
            self._copy_in(arrays, force=True)
        else:
            self._copy_in(arrays)
        outputs = self.launch()
        return [o if state else o.copy() for o, state in zip(outputs, self.is_state)]

    def write_back(self, outputs: list) -> list:
        """New state into the state's input buffers (the values the memory plan could not donate are copied,
        inside the step), so the caller gets those buffers back and passes them in again: no copy next call."""
        outputs = list(outputs)
        for out, arg, donated in self.state:
            if not donated:
                self.static_inputs[arg][...] = outputs[out]
            outputs[out] = self.static_inputs[arg]
        return outputs

    def _copy_in(self, arrays: list, force: bool = False) -> None:
        for dst, src in zip(self.static_inputs, arrays):
            if force or dst is not src:
                dst[...] = src
                self.copies_in += 1


def rerun(ex, static_inputs: list, write_back):
    """The CPU stand-in for graph capture: every launch runs the steps again on the same buffers."""
    def launch() -> list:
        return write_back(ex.collect(ex.execute(static_inputs)))
    return launch
