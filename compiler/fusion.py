"""Fusion: partition the optimised graph into kernels, library calls and host steps.

Nodes are visited consumers-first (reverse topological order). A node joins a group that reads it when the
group can read it through an affine view (``compiler.views``):

- elementwise ops (with broadcasting) and ``full`` join any group;
- a reduction (``sum``/``max``) joins a group whose domain is its input shape (same reduced axes for every
  reduction of the group), or a group over its output shape (with or without the reduced dims), whose domain
  then grows to the input shape: the group becomes a *row kernel* (one loop per reduction over each row,
  then the elementwise tail);
- movement ops (reshape, permute, broadcast_to) are never grouped: they only change views;
- matmul stays a library call (BLAS); everything else runs on the host with NumPy.

A node read by several steps (two kernels, a kernel and a matmul, ...) joins the group with the most readers
and is *stored* there for the others, unless another of its readers feeds that group (the join would make
a cycle of steps). Any member needed outside its group (an output, or read by another step) is stored: at
the group's full domain, once per row for row kernels, or once for a scalar. Each successful join spends one
unit of *fuel* (``GRAPHDUEL_FUSION_FUEL=N``: only the first N joins happen), so a wrong result can be bisected
to the join that caused it (``Schedule.log`` names it). A kernel holds at most ``MAX_KERNEL_OPS`` ops: a longer
run of fusable ops (a 10,000-op chain) is cut into chunks of consecutive ops and fused again, one kernel per
chunk. Every walk here is iterative: graphs are as deep as their longest chain.

    >>> from compiler.passes.testing import tiny_graph
    >>> [len(k.members) for k in fuse(tiny_graph()).groups]
    [1]
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from compiler import views as V
from eager.primitives import KERNEL, LIBRARY, PRIMITIVES, REDUCTION, VIEW
from tracer.ir import CONSTANT, PLACEHOLDER, Graph, Node

# from the op table's ``lowering``: what joins kernels (elementwise ops, and ``full`` as a literal), what kernels
# reduce, what only changes a view, what is a library call
ELEMENTWISE_OPS = frozenset(n for n, p in PRIMITIVES.items() if p.lowering == KERNEL and p.kind != REDUCTION)
REDUCE_OPS = frozenset(n for n, p in PRIMITIVES.items() if p.lowering == KERNEL and p.kind == REDUCTION)
VIEW_OPS = frozenset(n for n, p in PRIMITIVES.items() if p.lowering == VIEW)
LIBRARY_OPS = frozenset(n for n, p in PRIMITIVES.items() if p.lowering == LIBRARY)
MAX_VIEWS = 4  # distinct views of one value inside a kernel (each is a recomputation)
MAX_RECOMPUTE = 3  # kernels that may each recompute one value (a forward and its backward are two)
# ops one kernel may hold: a longer run of fusable ops is split into several kernels (``fuse``), each storing the
# values the next reads. Both compilers slow down per op as a function grows (reports/scale-cpu.md, CPU seconds for
# a 9,216-op GELU chain in kernels of 256 / 512 / 1,024 ops / one kernel: gcc -O3 0.37 / 0.44 / 0.77 / 1.18, NVRTC
# 2.56 / 2.47 / 3.34 / 4.86; an 8,190-op tree: gcc 0.68 / 0.77 / 0.95 / 4.18), and on CUDA the values live across
# a long body compete for registers. 256 is where both have stopped falling, and 5x the largest kernel of any
# workload (49 ops, gan_step), whose kernels it leaves as they were
MAX_KERNEL_OPS = 256


@dataclass(eq=False)
class Group:
    """One future kernel: members evaluated over ``domain``; ``reduced`` axes for row kernels."""

    id: int
    domain: tuple[int, ...]
    reduced: tuple[int, ...] | None
    members: list[Node] = field(default_factory=list)
    views: dict[int, set] = field(default_factory=dict)
    stores: dict[int, V.View] = field(default_factory=dict)

    @property
    def ndom(self) -> int:
        return len(self.domain)

    def remap(self, inner: V.View) -> None:
        self.views = {k: {V.compose(v, inner, len(self.domain)) for v in vs} for k, vs in self.views.items()}
        self.stores = {k: V.compose(v, inner, len(self.domain)) for k, v in self.stores.items()}

    def __repr__(self) -> str:
        ops = ",".join(n.op for n in self.members)
        red = f" reduce{list(self.reduced)}" if self.reduced else ""
        return f"<Group {self.id} {list(self.domain)}{red}: {ops}>"


@dataclass
class Join:
    """One fusion decision (the log that fuel bisects)."""

    index: int
    node: Node
    group: int

    def __str__(self) -> str:
        where = f"    # {self.node.source}" if self.node.source else ""
        return f"fusion {self.index}: {self.node.ref} {self.node.op} into kernel {self.group}{where}"


@dataclass
class Step:
    kind: str  # "kernel" | "library" | "host"
    node: Node | None = None
    group: Group | None = None

    @property
    def writes(self) -> list[Node]:
        if self.kind == "kernel":
            return [n for n in self.group.members if n.id in self.group.stores]
        return [self.node]


@dataclass
class Schedule:
    graph: Graph
    steps: list[Step]
    groups: list[Group]
    log: list[Join]


def fusion_fuel() -> int | None:
    value = os.environ.get("GRAPHDUEL_FUSION_FUEL")
    return None if value in (None, "") else int(value)


def reduce_axes(n: Node) -> tuple[int, ...]:
    ndim = len(n.args[0].shape)
    return tuple(sorted({a % ndim for a in n.params["axes"]})) if ndim else ()


def _strided(group: Group, n: Node) -> bool:
    """Whether ``group`` is a *column* kernel (its rows run across memory: the innermost dim of size > 1 is
    kept, a reduced one is outside it) and n spans its whole domain. Such a kernel walks n with a stride, once
    per phase; as a plain elementwise kernel n is computed and stored contiguously, once (measured on the
    classifier's GELU backward, 2048x1024: 100 ms fused into the bias-gradient column sum, 3.5 ms alone)."""
    if group.reduced is None or tuple(n.shape) != group.domain:
        return False
    big = [d for d, size in enumerate(group.domain) if size > 1]
    return bool(big) and big[-1] not in group.reduced and any(d in group.reduced for d in big)


def _kept_shapes(domain, axes) -> tuple:
    keep = tuple(1 if d in axes else s for d, s in enumerate(domain))
    drop = tuple(s for d, s in enumerate(domain) if d not in axes)
    return keep, drop


class _Fuser:
    def __init__(self, graph: Graph, fuel: int | None, chunks: dict | None = None):
        self.graph = graph
        self.fuel = fuel
        self.users = graph.users()
        self.external = {n.id for n in graph.outputs} | {v.id for _, v in graph.updates}
        self.homes: dict[int, list[Group]] = {}  # the groups computing a node (several when recomputed)
        self.groups: list[Group] = []
        self.log: list[Join] = []
        self.position = {n.id: i for i, n in enumerate(graph.nodes)}
        self.chunk = chunks or {}  # node id -> its piece of a kernel too big for one (``split_chunks``)
        self.group_chunk: dict[int, object] = {}  # group id -> the chunk of the node that started it
        self.chunk_group: dict[tuple, Group] = {}  # chunk -> its first kernel

    def consumers(self, n: Node) -> list[tuple[Node, tuple]]:
        """Non-movement readers of n, each with the movement nodes between (in order from n). A depth-first walk
        on an explicit stack (a chain of views may be thousands long), in the order a recursive one takes."""
        out: list[tuple[Node, tuple]] = []
        stack = [(u, ()) for u in reversed(self.users[n.id])]
        while stack:
            u, path = stack.pop()
            if u.op in VIEW_OPS:
                path = path + (u,)
                stack += [(w, path) for w in reversed(self.users[u.id])]
            else:
                out.append((u, path))
        return out

    def arg_view(self, u: Node, view, arg: Node, group: Group):
        if u.op in REDUCE_OPS:
            return V.identity(group.ndom) if arg.shape == group.domain else None
        return V.broadcast_source(view, u.shape, arg.shape, group.ndom)

    def through(self, path, view, group: Group):
        """View of the source of a movement chain, given the view of the chain's last node."""
        for m in reversed(path):
            src = m.args[0]
            if m.op == "broadcast_to":
                view = V.broadcast_source(view, m.shape, src.shape, group.ndom)
            elif m.op == "permute":
                view = V.permute_source(view, m.params["axes"])
            else:
                view = V.reshape_source(view, m.shape, src.shape, group.domain)
                if view is None:
                    return None
        return view

    def views_in(self, n: Node, cons, group: Group) -> set | None:
        out = set()
        for u, path in cons:
            for vu in group.views[u.id]:
                last = path[-1] if path else n
                view = self.arg_view(u, vu, last, group)
                view = None if view is None else self.through(path, view, group)
                if view is None:
                    return None
                out.add(view)
        return out if len(out) <= MAX_VIEWS else None

    def store_view(self, n: Node, group: Group):
        if math.prod(n.shape) == 1:  # a scalar (a step counter, a loss): stored once by the kernel
            return V.zeros(len(n.shape), group.ndom)
        if n.shape == group.domain:
            return V.identity(group.ndom)
        if group.reduced is not None and n.shape in _kept_shapes(group.domain, group.reduced):
            return V.reduced_view(group.domain, group.reduced, n.shape)
        return None

    def is_external(self, n: Node) -> bool:
        """Whether n, or a view of it, is returned (an output or new state): then n must be stored."""
        # a view chain that is returned may have no reader at all, so it shows in no consumer's path
        stack, seen = [n], set()
        while stack:
            x = stack.pop()
            if x.id in self.external:
                return True
            for u in self.users[x.id]:
                if u.op in VIEW_OPS and u.id not in seen:
                    seen.add(u.id)
                    stack.append(u)
        return False

    def candidates(self, cons) -> list[Group]:
        """Groups that read n, most readers first: n joins one and is stored for every other reader."""
        count: dict[int, int] = {}
        for u, _ in cons:
            for g in self.homes.get(u.id, ()):
                count[g.id] = count.get(g.id, 0) + 1
        return [self.groups[i] for i in sorted(count, key=lambda i: (-count[i], i))]

    def try_join(self, n: Node) -> Group | None:
        if self.fuel is not None and len(self.log) >= self.fuel:
            return None
        cons = self.consumers(n)
        groups = self.candidates(cons)
        # a node joins only kernels of its own chunk (``split_chunks``): recomputed, it must join all its readers'
        allowed = [g for g in groups if self.group_chunk[g.id] == self.chunk.get(n.id)]
        if 1 < len(groups) <= MAX_RECOMPUTE and allowed == groups and self.recompute(n, cons, groups):
            return groups[0]
        for group in allowed:
            inside = [(u, p) for u, p in cons if group in self.homes.get(u.id, ())]
            # read elsewhere too: by a step outside the group, or by a reader also recomputed in another group
            outside = any(self.homes.get(u.id, [None]) != [group] for u, _ in cons)
            if outside and self.reaches_indirectly(n, group):
                continue  # another reader of n feeds this group: joining would make a cycle of steps
            if outside and _strided(group, n):
                continue  # a column kernel would compute and store n in a strided walk: n gets its own kernel
            if self.join(n, inside, group, outside or self.is_external(n)):
                return group
        return self.join_chunk(n) if n.id in self.chunk else None

    def join_chunk(self, n: Node) -> Group | None:
        """n is read by kernels of other chunks only: it joins the first kernel of its own chunk, stored there.
        Otherwise every value of a chunk read only across the cut would start a kernel of its own, and the values
        they all read would then be recomputed in each of them (``recompute``)."""
        group = self.chunk_group.get(self.chunk[n.id])
        if group is None or group in self.homes.get(n.id, ()):
            return None
        if self.reaches_indirectly(n, group) or _strided(group, n):
            return None
        return group if self.join(n, [], group, True) else None

    def recompute(self, n: Node, cons, groups: list[Group]) -> bool:
        """An elementwise value read only by kernels is computed again in each of them rather than stored by
        one and loaded by the others: a forward activation recomputed in its backward kernel from the one
        array it came from, instead of every intermediate written out and read back (rematerialisation).
        Each copy spends one unit of fuel."""
        if n.op not in ELEMENTWISE_OPS or self.is_external(n):
            return False
        if any(not self.homes.get(u.id) for u, _ in cons):
            return False  # a matmul or host step reads n: it must be stored anyway
        if self.fuel is not None and len(self.log) + len(groups) > self.fuel:
            return False
        plans = []
        for group in groups:
            views = self.views_in(n, [(u, p) for u, p in cons if group in self.homes[u.id]], group)
            if views is None:
                return False
            plans.append((group, views))
        for group, views in plans:
            group.members.append(n)
            group.views[n.id] = set(views)
            self.homes.setdefault(n.id, []).append(group)
            self.log.append(Join(len(self.log) + 1, n, group.id))
        return True

    def join(self, n: Node, inside, group: Group, stored: bool) -> bool:
        views = self.views_in(n, inside, group)
        if views is None:
            return False
        remap = None
        if n.op in REDUCE_OPS:
            accepted = self.join_reduction(n, views, group)
            if accepted is None:
                return False
            views, remap = accepted
        store = None
        if stored:
            store = self.store_view(n, group) if remap is None else V.reduced_view(remap[0], remap[1], n.shape)
            if store is None:
                return False
        if remap is not None:  # the group grows from n's output shape to n's input domain
            inner = V.reduced_view(remap[0], remap[1], group.domain)
            group.domain, group.reduced = remap
            group.remap(inner)
        group.members.append(n)
        group.views[n.id] = set(views) | ({store} if store is not None else set())
        if store is not None:
            group.stores[n.id] = store
        self.homes[n.id] = [group]
        self.log.append(Join(len(self.log) + 1, n, group.id))
        return True

    def reaches_indirectly(self, n: Node, group: Group) -> bool:
        """Whether a path leads from n into ``group`` through another step (not only through views).

        Every member of ``group`` was visited before n, so lies downstream of it: the only cycle that joining
        n can close runs from n through another step back into the group. A step that is a group is entered
        as a whole (its members run together), so the walk goes on from everything it stores; that is also why
        positions cannot prune the walk (a group may reach back to a member early in the graph).
        """
        members = {m.id for m in group.members}
        stack = [(u, True) for u in self.users[n.id]]
        seen: set = set()
        while stack:
            x, direct = stack.pop()
            if x.id in members:
                if not direct:
                    return True
                if len(self.homes[x.id]) == 1:
                    continue  # a direct read by the group itself; a recomputed x also runs in its other groups
            if x.op in VIEW_OPS:
                if (x.id, direct) not in seen:
                    seen.add((x.id, direct))
                    stack += [(u, direct) for u in self.users[x.id]]
                continue
            for step in [h for h in self.homes.get(x.id, ()) if h is not group] or [None]:
                key = ("group", step.id) if step is not None else ("node", x.id)
                if key not in seen:
                    seen.add(key)
                    # a group's results leave it only through what it stores: a member it does not store is
                    # read inside it, or recomputed by its other readers' own groups
                    leaving = (x,) if step is None else [m for m in step.members if m.id in step.stores]
                    stack += [(u, False) for m in leaving for u in self.users[m.id]]
        return False

    def join_reduction(self, n: Node, views: set, group: Group):
        axes, domain = reduce_axes(n), n.args[0].shape
        canonical = V.reduced_view(domain, axes, n.shape)
        if group.domain == domain and group.reduced in (None, axes):
            if views == {canonical}:
                group.reduced = axes
                return views, None
            return None
        kept = tuple(s for d, s in enumerate(domain) if d not in axes)
        # the group runs over n's result, with or without the reduced dims (keepdims then a reshape: the VJP of
        # a broadcast, e.g. every bias gradient): it becomes a row kernel over n's input
        if group.reduced is None and group.domain in (n.shape, kept):
            inner = V.reduced_view(domain, axes, group.domain)
            remapped = {V.compose(v, inner, len(domain)) for v in views}
            if remapped == {canonical}:
                return remapped, (domain, axes)
        return None

    def new_group(self, n: Node) -> Group:
        if n.op in REDUCE_OPS:
            domain, axes = n.args[0].shape, reduce_axes(n)
            view = V.reduced_view(domain, axes, n.shape)
        else:
            domain, axes, view = n.shape, None, V.identity(len(n.shape))
        group = Group(len(self.groups), tuple(domain), axes, [n], {n.id: {view}}, {n.id: view})
        self.groups.append(group)
        self.group_chunk[group.id] = self.chunk.get(n.id)
        if n.id in self.chunk:
            self.chunk_group.setdefault(self.chunk[n.id], group)
        self.homes[n.id] = [group]
        return group

    def run(self) -> Schedule:
        position = self.position
        anchors: list[tuple[int, Step]] = []
        for n in reversed(self.graph.nodes):
            if n.op in (PLACEHOLDER, CONSTANT) or n.op in VIEW_OPS:
                continue
            if not self.users[n.id] and n.id not in self.external:
                continue  # dead (dce removes it; a schedule must not depend on that)
            if n.op in ELEMENTWISE_OPS or n.op in REDUCE_OPS:
                if self.try_join(n) is None:
                    group = self.new_group(n)
                    anchors.append((position[n.id], Step("kernel", group=group)))
            else:
                kind = "library" if n.op in LIBRARY_OPS else "host"
                anchors.append((position[n.id], Step(kind, node=n)))
        for g in self.groups:
            g.members.sort(key=lambda m: position[m.id])
        anchors.sort(key=lambda a: a[0])
        return Schedule(self.graph, [s for _, s in anchors], self.groups, self.log)


def fuse(graph: Graph, fuel: int | None = -1) -> Schedule:
    """Partition ``graph`` into steps; ``fuel`` None = unlimited, -1 = read ``GRAPHDUEL_FUSION_FUEL``.

    A kernel of more than ``MAX_KERNEL_OPS`` ops is split: its ops are cut into chunks (``split_chunks``) and
    the graph fused again with every join kept inside one chunk. Graphs without such a kernel are fused once.
    """
    fuel = fusion_fuel() if fuel == -1 else fuel
    chunks: dict[int, tuple] = {}
    schedule = _Fuser(graph, fuel).run()
    for again in range(4):  # each pass splits what the last one left too big; nodes already cut keep their chunks
        big = [g for g in schedule.groups if len(g.members) > MAX_KERNEL_OPS]
        if not big:
            break
        for g in big:
            for node_id, (group_id, index) in split_chunks(g).items():
                chunks.setdefault(node_id, (again, group_id, index))  # group ids restart with every pass
        schedule = _Fuser(graph, fuel, chunks).run()
    return schedule


def split_chunks(group: Group, limit: int | None = None) -> dict[int, tuple]:
    """Cut a kernel's ops into chunks of at most ``limit`` (``MAX_KERNEL_OPS``) that each cut few of its edges:
    consecutive ops of a depth-first post-order over the kernel's own operands (operands first), so that a
    chain is cut into segments and a tree into subtrees. Returns node id -> (group id, chunk index).

        >>> from compiler.passes.testing import dup_graph
        >>> split_chunks(fuse(dup_graph()).groups[0], limit=2)
        {1: (0, 0), 2: (0, 0), 3: (0, 1)}
    """
    limit = limit or MAX_KERNEL_OPS
    members = {m.id for m in group.members}
    order: list[Node] = []
    seen: set[int] = set()
    for root in reversed(group.members):
        if root.id in seen:
            continue
        seen.add(root.id)
        stack = [(root, iter(_fused_operands(root)))]
        while stack:  # iterative post-order: a kernel's operand chain may be thousands long
            node, operands = stack[-1]
            for a in operands:
                if a.id in members and a.id not in seen:
                    seen.add(a.id)
                    stack.append((a, iter(_fused_operands(a))))
                    break
            else:
                stack.pop()
                order.append(node)
    per_chunk = -(-len(order) // -(-len(order) // limit))  # balanced: 1,000 ops at 512 are two chunks of 500
    return {n.id: (group.id, i // per_chunk) for i, n in enumerate(order)}


def _fused_operands(n: Node) -> list[Node]:
    """The values a kernel reads to compute n: its operands, seen through movement ops."""
    out = []
    for a in n.inputs:
        while a.op in VIEW_OPS:
            a = a.args[0]
        out.append(a)
    return out


def bisect(make_program, is_good) -> Join | None:
    """Find the fusion that breaks a result: ``make_program(fuel)`` builds and runs with that fuel and
    ``is_good(result)`` judges it. Returns the first Join whose fuel turns good into bad (None if none does).

    Assumes fuel 0 (no fusion) is good and full fusion is bad; binary search over the join log.
    """
    result, log = make_program(None)
    if is_good(result):
        return None
    lo, hi = 0, len(log)          # good at lo, bad at hi
    if not is_good(make_program(0)[0]):
        raise ValueError("the result is wrong even without fusion: the bug is not in a fusion")
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if is_good(make_program(mid)[0]):
            lo = mid
        else:
            hi = mid
    return log[hi - 1]
