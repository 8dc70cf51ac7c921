"""Which losses each site call reaches, for models with local losses: every tensor of the traced
pass carries the module calls it depends on (``Taint``), and each loss's scores name the calls
that reach it (``Reach``); ``trace.py`` runs it beside its other bookkeeping."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor, nn
from torch.utils._pytree import tree_flatten

from .layers import LocalLoss, StopGradient
from .sites import ModelNotSupportedError

if TYPE_CHECKING:  # pragma: no cover
    from .trace import Trace


def _in_place(name: str, kwargs: dict) -> bool:
    """A function that writes into its first argument: ``add_``, ``__iadd__``, ``x[i] = v``,
    ``F.relu(x, inplace=True)``."""
    if name == "__setitem__" or kwargs.get("inplace") is True:
        return True
    if name.startswith("__"):
        return name.startswith("__i") and name.endswith("__")
    return name.endswith("_")


class Taint:
    """Which module calls each tensor depends on: by tensor (``id``), and by memory for what
    in-place writes put there (a view taken before or after the write sees it too). Every
    tensor named is kept alive, so ids and storages stay unique during the pass."""

    def __init__(self) -> None:
        self.by_tensor: dict[int, frozenset[int]] = {}
        self.by_memory: dict[int, frozenset[int]] = {}
        self.cut_ids: set[int] = set()
        self.keep: list[Tensor] = []

    @staticmethod
    def _memory(t: Tensor) -> int:
        return t.untyped_storage().data_ptr()

    def of(self, t: Tensor) -> frozenset[int]:
        own = self.by_tensor.get(id(t), frozenset())
        if id(t) in self.cut_ids:  # a StopGradient's output: its memory's past is cut too
            return own
        return own | self.by_memory.get(self._memory(t), frozenset())

    def add(self, t: Tensor, calls: frozenset[int], memory: bool = False) -> None:
        self.keep.append(t)
        self.by_tensor[id(t)] = self.by_tensor.get(id(t), frozenset()) | calls
        if memory:
            key = self._memory(t)
            self.by_memory[key] = self.by_memory.get(key, frozenset()) | calls

    def cut(self, t: Tensor) -> None:
        """``t`` depends on nothing: a StopGradient's output (``detach`` shares its memory)."""
        self.keep.append(t)
        self.by_tensor[id(t)] = frozenset()
        self.cut_ids.add(id(t))

    def spread(self, func, args: tuple, kwargs: dict, leaves: list, out) -> None:
        """Outputs depend on every call the inputs depend on (``detach`` cuts: forward-mode
        tangents do not pass it); an in-place function writes that into its first argument's
        memory, which every view of it shares."""
        name = getattr(func, "__name__", "")
        if name == "detach":
            return
        union: frozenset[int] = frozenset()
        for t in leaves:
            if isinstance(t, Tensor):
                union |= self.of(t)
        if not union:
            return
        for o in tree_flatten(out)[0]:
            if isinstance(o, Tensor):
                self.add(o, union)
        if args and isinstance(args[0], Tensor) and _in_place(name, kwargs):
            self.add(args[0], union, memory=True)


class Reach:
    """Which losses each module call reaches, for models with local losses (others: nothing is
    tracked). Every tensor carries the calls it depends on (the recorder spreads them through
    functions, ``detach`` cutting), a module call's output adds the call itself (a
    StopGradient's carries none), and each loss's scores (the model's output first, then every
    LocalLoss call), read once the pass is over, name the calls that reach it."""

    def __init__(self, model: nn.Module, stack: list) -> None:
        local = any(isinstance(m, LocalLoss) for m in model.modules())
        self.taint = Taint() if local else None
        self.stack = stack
        self.outputs: list[Tensor] = []  # the model's output's tensors
        # per LocalLoss call: its scores, the modules it ran in and the calls they depended on
        self.scores: list[tuple[Tensor, tuple[str, ...], frozenset[int]]] = []

    def after_call(self, module: nn.Module, name: str, leaves: list[Tensor], call: int) -> None:
        taint = self.taint
        if taint is None:
            return
        for t in leaves:
            if isinstance(module, StopGradient):
                taint.cut(t)
            else:
                taint.add(t, frozenset({call}))
        if isinstance(module, LocalLoss) and leaves:
            self.scores.append((leaves[0], tuple(n for n, _ in self.stack), taint.of(leaves[0])))
        elif name == "":
            self.outputs = list(leaves)

    def fill(self, trace: Trace, calls: list) -> None:
        """Per layout call, the losses whose value depends on it (``trace.reach``)."""
        taint = self.taint
        if taint is None:
            return
        sites = {s.name for s in trace.sites}
        for scores, inside, then in self.scores:
            within = [n for n in inside if n in sites]
            if within:
                raise ModelNotSupportedError(
                    f"a LocalLoss is called inside site {within[-1]!r}: that site's tangent is "
                    "added to its output, after the local loss has read its inner values. Call "
                    "the LocalLoss outside every site (in a container's forward)"
                )
            if taint.of(scores) != then:
                raise ModelNotSupportedError(
                    "a LocalLoss's scores are modified in place after the LocalLoss read them; "
                    "compute them fully before passing them to it"
                )
        losses = [frozenset().union(*(taint.of(t) for t in self.outputs))]
        losses += [then for _, _, then in self.scores]
        site_calls = [j for j, (name, _, _) in enumerate(calls) if name in sites]
        trace.reach = [frozenset(i for i, on in enumerate(losses) if j in on) for j in site_calls]
        trace.losses = len(losses)
