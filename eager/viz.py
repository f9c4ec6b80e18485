"""Graphviz DOT of the autograd graph behind a tensor (``make_dot``), and rendering it (``render``).

Nodes are the recorded backward ops (``MulBackward``...), leaves that require grad (blue, with shape and
dtype) and the output (green). Edges follow the gradient's inputs, drawn from input to consumer as torchviz
draws them. Only tensors that carry gradient are shown (constants and ``no_grad`` values are not).

    >>> import eager
    >>> w = eager.tensor([1.0], requires_grad=True)
    >>> dot = make_dot((w * 2).sum(), params={"w": w})
    >>> "MulBackward" in dot, "f32[1]" in dot
    (True, True)
"""

from __future__ import annotations

import os
import shutil
import subprocess

from eager.backend import short_name
from eager.tensor import Tensor

FORMATS = ("svg", "png", "pdf")


class DotSource(str):
    """DOT text (a ``str``) with a ``render`` method, so torchviz's ``make_dot(y).render("graph")`` ports."""

    @property
    def source(self) -> str:
        return str(self)

    def render(self, filename: str = "graph", format: str = "svg") -> str:
        """Write the DOT text to ``filename`` and the picture to ``filename.format``; return the picture's path."""
        with open(filename, "w") as f:
            f.write(self)
        return render(self, f"{filename}.{format}", format)


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _aval(t: Tensor) -> str:
    return f"{short_name(t.dtype)}[{','.join(map(str, t.shape))}]"


def make_dot(output: Tensor | list[Tensor] | tuple[Tensor, ...], params: dict[str, Tensor] | None = None) -> DotSource:
    """DOT text for the autograd graph that produced ``output`` (one tensor or several).

    ``params`` names leaves (``dict(model.named_parameters())``). A graph already freed by ``backward()``
    (without ``retain_graph=True``) shows its freed nodes in grey with a note.
    """
    outputs = list(output) if isinstance(output, (list, tuple)) else [output]
    names = {id(t): name for name, t in (params or {}).items()}
    lines = ["digraph autograd {",
             '  node [shape=box, style="filled,rounded", fontname="monospace", fontsize=10, fillcolor=lightgrey]',
             "  edge [arrowsize=0.7]"]
    ids: dict[int, str] = {}

    def node_id(obj) -> str:
        key = id(obj)
        if key not in ids:
            ids[key] = f"n{len(ids)}"
        return ids[key]

    def leaf(t: Tensor) -> str:
        nid = node_id(t)
        label = (names[id(t)] + "\n" if id(t) in names else "") + _aval(t)
        lines.append(f"  {nid} [label={_quote(label)}, fillcolor=lightblue]")
        return nid

    seen: set[int] = set()
    stack = []
    for i, out in enumerate(outputs):
        oid = f"out{i}"
        lines.append(f"  {oid} [label={_quote(names.get(id(out), 'output') + chr(10) + _aval(out))}, "
                     "fillcolor=darkolivegreen1]")
        if out.grad_fn is not None:
            lines.append(f"  {node_id(out.grad_fn)} -> {oid}")
            stack.append(out.grad_fn)
        elif out.requires_grad:
            lines.append(f"  {leaf(out)} -> {oid}")
    while stack:
        fn = stack.pop()
        if id(fn) in seen:
            continue
        seen.add(id(fn))
        nid = node_id(fn)
        if fn.inputs is None:
            lines.append(f"  {nid} [label={_quote(fn.name() + chr(10) + '(freed by backward)')}, fontcolor=grey40]")
            continue
        lines.append(f"  {nid} [label={_quote(fn.name())}]")
        for x in fn.inputs:
            if not isinstance(x, Tensor) or not x.requires_grad:
                continue
            if x.grad_fn is None:
                src = ids.get(id(x)) or leaf(x)
            else:
                src = node_id(x.grad_fn)
                stack.append(x.grad_fn)
            lines.append(f"  {src} -> {nid}")
    lines.append("}")
    return DotSource("\n".join(_dedupe(lines)) + "\n")


def _dedupe(lines: list[str]) -> list[str]:
    # a leaf or edge reached along two paths is emitted once
    seen, out = set(), []
    for line in lines:
        if line not in seen:
            seen.add(line)
            out.append(line)
    return out


def render(dot_text: str, path: str, format: str = "svg") -> str:
    """Render DOT text to ``path`` with Graphviz's ``dot`` program; returns ``path``.

    Raises ``RuntimeError`` naming the fix when ``dot`` is not installed.
    """
    if format not in FORMATS:
        raise ValueError(f"render: format must be one of {FORMATS}, got {format!r}.")
    exe = shutil.which("dot")
    if exe is None:
        raise RuntimeError("render: the Graphviz `dot` program was not found on PATH. Install Graphviz "
                           "(`apt-get install graphviz`, `brew install graphviz` or `conda install graphviz`), "
                           "or save the DOT text (make_dot returns it as a string) and render it elsewhere.")
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    result = subprocess.run([exe, f"-T{format}", "-o", path], input=dot_text.encode(), capture_output=True)
    if result.returncode != 0:
        raise RuntimeError(f"render: `dot -T{format}` failed with exit code {result.returncode}: "
                           f"{result.stderr.decode(errors='replace').strip()}")
    return path
