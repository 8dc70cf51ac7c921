"""One traced forward pass: which site forms which parameter's gradient, and is the batch coupled.

:func:`trace_sites` runs the model once, on two examples of a batch, under a
``TorchFunctionMode`` that sees every operation's arguments and with module hooks that keep the
stack of modules being run. From that:

* **who uses which parameter.** A trainable parameter used while a chosen site is running
  belongs to the innermost such site (its rule forms the gradient of that use). A parameter
  used outside every chosen site belongs to the module whose own ``forward`` used it (a
  ``LayerNorm``, an ``Embedding``, ``nn.MultiheadAttention`` using its ``out_proj`` weights
  directly, a patch embedding's class token), which becomes a site too, with a local-VJP rule.
  A parameter used in the root's own ``forward`` is refused (its local VJP would be a backward
  pass through the whole network). A parameter used in several places (a module called twice,
  tied weights) gets every use's contribution. Parameters never used get no gradient, as with
  backprop.
* **the layout**: every site call in order with its activity's shape per example.
* **masks**: a site whose output is consumed by exactly one elementwise activation module and
  nothing else gets that module as its mask (``activation-masked``).

:func:`check_batch_coupling` checks, on a few examples, that a tangent on one example's
activities changes no other example's loss; per-example JVPs are derivatives only then. When it
finds coupling it names the module (or the code between two modules) that mixes the examples.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor, nn
from torch.nn.modules import module as module_hooks
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from .context import LossFn, SiteContext
from .engine import GeneralEngine, Layout, LayoutCall, forward_mode_kernels
from .layers import LocalLoss, StopGradient
from .next_layer import NextPath, ResidualAdd, is_linear_map, is_pass_through, is_transparent
from .reach import Reach, Taint
from .rules import activity_leaves, rule_for
from .sites import ELEMENTWISE_TYPES, ModelNotSupportedError, Site
from .state import untouched


class BatchCouplingError(ModelNotSupportedError):
    """Examples of a batch influence each other, so per-example JVPs are not derivatives."""


@dataclass
class Trace:
    sites: list[Site]
    layout: Layout
    unused: list[str] = field(default_factory=list)  # trainable parameters the pass never used
    # per layout call: how it reaches the next linear layer, why it does not (a string), or
    # None when its output is the model's output
    paths: list[NextPath | str | None] = field(default_factory=list)
    # with local losses (LocalLoss modules): per layout call, the losses its output reaches
    # (0: the model's output, then each LocalLoss call in order); None: the model has none
    reach: list[frozenset[int]] | None = None
    losses: int = 1  # the model's output's loss, then one per LocalLoss call


def _in_parametrization(name: str) -> bool:
    return ".parametrizations." in f".{name}."


# Calls that read a tensor's metadata, not its values: they consume nothing. (Attribute reads
# arrive as ``__get__`` of the attribute: ``.shape`` reads metadata, ``.mT`` computes.)
_INTROSPECTION = frozenset(
    {"dim", "size", "numel", "is_floating_point", "is_complex", "stride", "__len__"}
)
_METADATA = frozenset(
    {"shape", "dtype", "device", "ndim", "layout", "requires_grad", "is_cuda", "names"}
)


def _reads_metadata(func) -> bool:
    name = getattr(func, "__name__", "")
    if name == "__get__":
        return getattr(getattr(func, "__self__", None), "__name__", None) in _METADATA
    return name in _INTROSPECTION


# Functions that add their two tensor arguments: ``s + r`` passes s's tangent on unchanged.
_ADDS = frozenset({"add", "__add__", "__radd__"})


class _Recorder(TorchFunctionMode):
    """Sees every torch function call: records parameter uses, who consumes site outputs and
    (``taint``: when the model has local losses) which module calls each tensor depends on."""

    def __init__(
        self, params: dict[int, str], stack: list, consumed: dict, taint: Taint | None = None
    ) -> None:
        super().__init__()
        self.params, self.stack, self.consumed = params, stack, consumed
        self.uses: list[tuple[str, tuple[str, ...]]] = []
        self.taint = taint  # which calls each tensor depends on; None: not tracked
        self.keep: list[Tensor] = []  # tensors whose ids are keys: alive, so ids stay unique

    paused = False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.paused:
            return func(*args, **kwargs)
        leaves, _ = tree_flatten((args, kwargs))
        top = self.stack[-1] if self.stack else None
        consumed_here = []
        for t in leaves:
            if not isinstance(t, Tensor):
                continue
            name = self.params.get(id(t))
            if name is not None:
                self.uses.append((name, tuple(n for n, _ in self.stack)))
            entry = self.consumed.get(id(t))
            # A function call inside a module that itself received the tensor is that module's
            # business (ReLU calling F.relu); anything else consumes it directly.
            if entry is not None and (top is None or id(t) not in top[1]):
                if not _reads_metadata(func):
                    consumed_here.append(entry)
        out = func(*args, **kwargs)
        for entry in consumed_here:
            entry["consumers"].append(self._consumer(func, args, kwargs, out))
        if self.taint is not None:
            self.taint.spread(func, args, kwargs, leaves, out)
        return out

    def _consumer(self, func, args, kwargs, out) -> tuple[str, str, int]:
        """``("function", name, id)``; for ``s + r`` the id of its output, now tracked too."""
        name = getattr(func, "__name__", str(func))
        if name == "__get__":
            name = "." + getattr(func.__self__, "__name__", "attribute")
        tensors = [a for a in args if isinstance(a, Tensor)]
        same = isinstance(out, Tensor) and all(t.shape == out.shape for t in tensors)
        # s + r of one shape (a broadcast would add s into several places: not the identity)
        if name in _ADDS and len(tensors) == 2 and len(args) == 2 and not kwargs and same:
            if isinstance(out, Tensor) and id(out) not in self.consumed:
                self.consumed[id(out)] = {"consumers": [], "call": None}
                self.keep.append(out)
            return ("function", name, id(out))
        return ("function", name, 0)


def _choose_owner(stack: tuple[str, ...], chosen: dict[str, nn.Module]) -> str:
    """The site that forms a gradient for a use of a parameter made with ``stack`` running."""
    for name in reversed(stack):
        if name in chosen:
            return name
    for name in reversed(stack):
        if not _in_parametrization(name):
            return name
    return ""


def trace_sites(
    model: nn.Module, x: Tensor, chosen: dict[str, nn.Module], device: torch.device
) -> Trace:
    """Trace one forward pass of ``model`` on (at most two examples of) ``x``; see the module."""
    names = {id(m): n for n, m in model.named_modules()}
    params = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
    by_name = dict(model.named_parameters())
    stack: list[tuple[str, set[int]]] = []  # (module name, ids of the tensors it received)
    consumed: dict[int, dict] = {}  # id(site output) -> {"tensor", "consumers", "call"}
    calls: list[tuple[str, list[torch.Size], int]] = []  # (module, activity shapes, output id)
    keep: list[Tensor] = []  # outputs stay alive, so their ids stay unique during the pass

    entered: dict[str, int] = {}
    reach = Reach(model, stack)

    def pre(module: nn.Module, args: tuple) -> None:
        name = names.get(id(module))
        if name is None:
            return None
        ids = {id(t) for t in tree_flatten(args)[0] if isinstance(t, Tensor)}
        n = entered.get(name, 0)
        entered[name] = n + 1
        for i in ids:
            if i in consumed:
                consumed[i]["consumers"].append(("module", name, n))
        stack.append((name, ids))
        return None

    def post(module: nn.Module, args: tuple, output) -> None:
        name = names.get(id(module))
        if name is None:
            return None
        stack.pop()
        recorder.paused = True  # this hook's own reads of the output are no consumers
        try:
            leaves = activity_leaves(output)
            calls.append((name, [t.shape for t in leaves], id(leaves[0]) if leaves else 0))
            reach.after_call(module, name, leaves, len(calls) - 1)
        finally:
            recorder.paused = False
        if len(leaves) == 1 and name and id(leaves[0]) not in consumed:
            # A container returning its last child's output (or a module returning its input)
            # keeps the innermost producer: consumers of the outer call consume the same tensor.
            consumed[id(leaves[0])] = {"consumers": [], "call": len(calls) - 1}
            keep.append(leaves[0])
        return None

    recorder = _Recorder(params, stack, consumed, reach.taint)
    sample = x[: min(2, x.shape[0])]
    hooks = [
        module_hooks.register_module_forward_pre_hook(pre),
        module_hooks.register_module_forward_hook(post, always_call=True),
    ]
    try:
        with torch.no_grad(), untouched(model, device), forward_mode_kernels(), recorder:
            model(sample)
    finally:
        for h in hooks:
            h.remove()
    trace = _build_trace(model, chosen, recorder.uses, calls, consumed, by_name)
    reach.fill(trace, calls)
    return trace


def _build_trace(model, chosen, uses, calls, consumed, by_name) -> Trace:
    owners: dict[str, dict[str, nn.Parameter]] = {}
    for param, stack in uses:
        owner = _choose_owner(stack, chosen)
        if owner == "":
            raise ModelNotSupportedError(
                f"parameter {param!r} is used directly in the forward of the model's root "
                f"module ({type(model).__name__}); forming its gradient there would be a "
                "backward pass through the whole network. Move it into a submodule (e.g. a "
                "patch-embedding module holding the class token and position embedding)"
            )
        owners.setdefault(owner, {})[param] = by_name[param]
    modules = dict(model.named_modules())
    called = [name for name, _, _ in calls]
    sites = []
    for name in sorted(owners, key=called.index):
        module = modules[name]
        site = Site(name, module, owners[name], chosen=name in chosen)
        site.rule = rule_for(module, site.params)
        site.mask_module = _mask_module(name, calls, consumed, modules)
        sites.append(site)
    site_names = {s.name for s in sites}
    layout_calls: list[LayoutCall] = []
    counts: dict[str, int] = {}
    path_of = _PathFinder(calls, consumed, modules)
    paths: list[NextPath | str | None] = []
    for j, (name, shapes, _) in enumerate(calls):
        if name not in site_names:
            continue
        paths.append(path_of(j))
        n = counts.get(name, 0)
        counts[name] = n + 1
        per_example = _per_example_shape(name, shapes)
        layout_calls.append(LayoutCall(name, name if n == 0 else f"{name}#{n}", per_example))
    used = {p for p, _ in uses}
    unused = [n for n, p in model.named_parameters() if p.requires_grad and n not in used]
    return Trace(sites=sites, layout=Layout(layout_calls), unused=unused, paths=paths)


def _per_example_shape(name: str, shapes: list[torch.Size]) -> tuple[int, ...]:
    if not shapes:
        raise ModelNotSupportedError(f"site {name!r} returns no floating-point tensor to perturb")
    if len(shapes) == 1:
        return tuple(shapes[0][1:])
    return (sum(int(torch.Size(s[1:]).numel()) for s in shapes),)


def _mask_module(name, calls, consumed, modules) -> nn.Module | None:
    """The one elementwise activation module consuming every call of site ``name``, if any."""
    found: nn.Module | None = None
    for i, (call_name, _, out_id) in enumerate(calls):
        if call_name != name:
            continue
        entry = consumed.get(out_id)
        consumers = None if entry is None else direct_consumers(entry, modules)
        if entry is None or entry["call"] != i or len(consumers) != 1:
            return None
        kind, consumer, _ = consumers[0]
        module = modules.get(consumer) if kind == "module" else None
        if (
            module is None
            or type(module) not in ELEMENTWISE_TYPES
            or module._forward_hooks
            or module._forward_pre_hooks
            or (found is not None and module is not found)
        ):
            return None
        found = module
    return found


def _pass_through_problem(name: str, module: nn.Module, shapes: list) -> str | None:
    """Why a consuming module (its traced call's output ``shapes``) is no step of a route."""
    from .next_layer import POOL_TYPES

    kind = type(module).__name__
    if not is_pass_through(module):
        return (
            f"reaches {name!r} ({kind}), which is neither a plain Linear/Conv layer nor an "
            "elementwise activation, max pool, Flatten or layer norm"
        )
    wanted = 3 if isinstance(module, nn.MaxPool1d) else 4
    if isinstance(module, POOL_TYPES) and (len(shapes) != 1 or len(shapes[0]) != wanted):
        got = [tuple(s) for s in shapes]
        return f"goes to {name!r} ({kind}) with output {got}, not batched (B, C, *spatial)"
    return None


def direct_consumers(entry: dict, modules: dict) -> list[tuple[str, str, int]]:
    """Who uses a module's output, leaving out ``nn.Sequential`` containers (they only pass
    it on to their children, who are consumers of their own) and stop-gradients (nothing
    passes them)."""
    return [c for c in entry["consumers"] if not (c[0] == "module" and _routes(modules[c[1]]))]


def _routes(module: nn.Module) -> bool:
    """A plain ``nn.Sequential`` only hands its input to its first child, a StopGradient
    nothing on (with hooks either may do anything)."""
    kind = type(module)
    return (
        kind in (nn.Sequential, StopGradient)
        and not module._forward_hooks
        and not (module._forward_pre_hooks)
    )


class _PathFinder:
    """The :class:`NextPath` of a traced call (by index into the pass's calls), memoised."""

    def __init__(self, calls: list, consumed: dict, modules: dict) -> None:
        self.calls, self.consumed, self.modules = calls, consumed, modules
        self.call_of: dict[tuple[str, int], int] = {}
        counts: dict[str, int] = {}
        for j, (name, _, _) in enumerate(calls):
            n = counts.get(name, 0)
            counts[name] = n + 1
            self.call_of[(name, n)] = j
        self.memo: dict[int, NextPath | str | None] = {}

    def __call__(self, j: int) -> NextPath | str | None:
        if j not in self.memo:
            self.memo[j] = self._walk(j)
        return self.memo[j]

    def _entry(self, j: int) -> dict | None:
        entry = self.consumed.get(self.calls[j][2])
        return entry if entry is not None and entry["call"] == j else None

    def _walk(self, j: int) -> NextPath | str | None:
        """Follow call j's output through pass-through modules to a linear layer."""
        entry = self._entry(j)
        if entry is None:
            return "its output is not one tensor first made by it"
        between: list[nn.Module] = []
        label = "its output"
        while True:
            found = self._sole_consumer(entry, label)
            if found is None:  # the model's output or a local loss (through ``between``)
                return NextPath(between, None) if between else None
            if isinstance(found, str):
                return found
            name, module, c = found
            if isinstance(module, ResidualAdd):
                between.append(module)
                entry, label = self.consumed[c], f"the output of a residual add ({name})"
                continue
            if is_linear_map(module):
                return NextPath(between, module, self(c))
            why = _pass_through_problem(name, module, self.calls[c][1])
            if why is None and between and isinstance(between[-1], ResidualAdd):
                why = (
                    f"goes to {name!r} ({type(module).__name__}) after a residual add, where "
                    "its derivative depends on the residual's value"
                )
            if why is not None:
                return f"{label} {why}"
            between.append(module)
            entry = self._entry(c)
            if entry is None:
                return f"the output of {name!r} is not one tensor"
            label = f"the output of {name!r}"

    def _sole_consumer(self, entry: dict, label: str):
        """``(name, module, call)`` of the one module consuming the entry's tensor (for a
        residual add: ``(name, ResidualAdd(), id of its output)``), None when nothing does (the
        model's output, or a local loss's scores), or why it is not one module (a string)."""
        consumers = direct_consumers(entry, self.modules)
        same = [c for c in consumers if c[0] == "module" and self._returns_input(c, entry)]
        changed = [c for c in same if not is_transparent(self.modules[c[1]], same=True)]
        changed = [c for c in changed if not isinstance(self.modules[c[1]], LocalLoss)]
        if changed:
            return f"{label} is modified in place by {changed[0][1]!r} (inplace=True)"
        if any(isinstance(self.modules[c[1]], LocalLoss) for c in same):
            return (
                None if len(consumers) == 1 else f"{label} is a local loss's scores and used again"
            )
        consumers = [c for c in consumers if c not in same]
        if not consumers:
            return None
        if len(consumers) > 1:
            names = [c[1] for c in consumers][:4]
            return f"{label} is used {len(consumers)} times ({names}), not by one module"
        kind, name, n = consumers[0]
        if kind == "function" and n and name in _ADDS:
            return f"{name}()", ResidualAdd(), n
        if kind == "function":
            return (
                f"{label} goes to {name}() in a module's forward (a residual add, a reshape, "
                "attention), not to a module"
            )
        return name, self.modules[name], self.call_of[(name, n)]

    def _returns_input(self, consumer: tuple[str, str, int], entry: dict) -> bool:
        c = self.call_of.get((consumer[1], consumer[2]))
        return c is not None and self.consumed.get(self.calls[c][2]) is entry


# ------------------------------------------------------------------------------ coupling

# Tangents on the other examples larger than this (relative to the injected tangents, which are
# standard normal) mean coupling: per-example operations leave them exactly zero.
COUPLING_TOLERANCE = 1e-6


def check_batch_coupling(
    engine: GeneralEngine, x: Tensor, targets: Tensor, loss_fn: LossFn, device: torch.device
) -> None:
    """Raise :class:`BatchCouplingError` unless each example's loss depends on that example's
    activities alone. Checked with tangents on the first example's activities only, on at most
    eight examples, leaving the model's state untouched."""
    n = min(8, x.shape[0])
    if n < 2:
        return
    xs, ts = x[:n], targets[:n]
    gen = torch.Generator(device=x.device).manual_seed(0)

    def first_example_only(ctx: SiteContext) -> Tensor:
        u = torch.zeros(1, *ctx.preact.shape, dtype=ctx.preact.dtype, device=ctx.preact.device)
        u[0, 0] = torch.randn(ctx.preact.shape[1:], generator=gen, device=gen.device).to(u.dtype)
        return u

    diagnosis = _CouplingProbe(engine.model)
    with torch.no_grad(), untouched(engine.model, device), diagnosis:
        res = engine.run(xs, ts, loss_fn, 1, first_example_only, False, False)
    others = res.jvps[0, 1:].abs().max()
    if float(others) <= COUPLING_TOLERANCE * max(1.0, float(res.jvps[0, 0].abs())):
        return
    raise BatchCouplingError(
        f"{diagnosis.culprit()} mixes the examples of a batch, so the per-example JVPs that "
        "activity-space guesses use are not derivatives (a tangent on example 0 changed the "
        f"losses of other examples by up to {float(others):.3g}). Use jvp='batch' (--jvp "
        "batch: one directional derivative of the batch loss per tangent: unbiased, higher "
        "variance), a "
        "weight-space guess, or a model without batch coupling (e.g. GroupNorm instead of "
        "BatchNorm, or the model in eval mode)"
    )


class _CouplingProbe:
    """Hooks on every module recording whether its input/output tangents reach other examples."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.names = {id(m): n for n, m in model.named_modules()}
        self.events: list[tuple[str, str, bool, bool]] = []  # (module, parent, in, out)
        self._open: list[tuple[str, bool]] = []

    @staticmethod
    def _spread(value) -> bool:
        for t in tree_flatten(value)[0]:
            if isinstance(t, Tensor) and t.is_floating_point() and t.dim() > 0 and len(t) > 1:
                tangent = fwAD.unpack_dual(t).tangent
                if tangent is not None and float(tangent[1:].abs().max()) > COUPLING_TOLERANCE:
                    return True
        return False

    def __enter__(self):
        def pre(module, args):
            name = self.names.get(id(module))
            if name is not None:
                self._open.append((name, self._spread(args)))

        def post(module, args, output):
            name = self.names.get(id(module))
            if name is not None:
                _, spread_in = self._open.pop()
                parent = self._open[-1][0] if self._open else None
                self.events.append((name, parent, spread_in, self._spread(output)))

        self._hooks = [
            module_hooks.register_module_forward_pre_hook(pre),
            module_hooks.register_module_forward_hook(post, always_call=True),
        ]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._hooks:
            h.remove()

    def culprit(self) -> str:
        for name, parent, spread_in, spread_out in self.events:
            if spread_in:
                where = repr(parent) if parent else "the root module"
                return (
                    f"code in the forward of {where} before it calls {name!r}"
                    if parent is not None
                    else f"code before module {name!r}"
                )
            if spread_out:
                module = self._module(name)
                label = f"module {name!r} ({type(module).__name__})" if name else "the model"
                return label
        return "the loss function (or code after the last module)"

    def _module(self, name: str) -> nn.Module:
        return dict(self.model.named_modules())[name]
