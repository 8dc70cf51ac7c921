"""What a benchmark measures: methods (a way to get a gradient), scenarios (a model and a batch
with the methods measured on it), targets (a ratio with a threshold) and the presets."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Method:
    """One way to get a gradient: ``backprop`` (a plain ``loss.backward()``) or an estimator."""

    label: str
    guess: str = "backprop"
    tangents: int = 1
    aggregate: str = "mean"
    low_memory: bool = False
    options: tuple[tuple[str, object], ...] = ()
    peer: str | None = None  # "frog-loop": the peer implementation of peers.py, not ours

    @property
    def is_backprop(self) -> bool:
        return self.guess == "backprop" and self.peer is None

    def forward_passes(self) -> float:
        """Cost in forward passes under the cost model of the module docstring."""
        if self.is_backprop:
            return 3.0
        if self.peer == "frog-loop":  # a primal and a tangent pass per tangent, one local backward
            return 2.0 * self.tangents + 2.0
        from ..guesses import GUESSES

        weight_space = GUESSES[self.guess].space == "weight"
        return 1.0 + (2.0 if weight_space else 1.0) * self.tangents


BACKPROP = Method("backprop")


@dataclass(frozen=True)
class Scenario:
    """A model and batch, and the methods measured on it (backprop always first).

    ``model`` is a name of :data:`forwardgrad.models.MODELS`; the MLP is ``depth`` hidden layers
    of ``width`` on ``in_features`` inputs, other models take ``input_shape`` (one example's)
    and ``options`` (the builder's keyword arguments)."""

    name: str
    depth: int = 0
    width: int = 0
    batch: int = 1
    methods: tuple[Method, ...] = ()
    in_features: int = 784
    classes: int = 10
    time: bool = True
    memory: bool = False
    model: str = "mlp"
    input_shape: tuple[int, ...] = ()
    options: tuple[tuple[str, object], ...] = ()

    def all_methods(self) -> tuple[Method, ...]:
        return (BACKPROP, *[m for m in self.methods if not m.is_backprop])

    def example_shape(self) -> tuple[int, ...]:
        return (self.in_features,) if self.model == "mlp" else tuple(self.input_shape)


@dataclass(frozen=True)
class Target:
    """``numerator <= threshold * factor * denominator``, each a (scenario, method label) pair."""

    text: str
    kind: str  # "time" | "memory"
    numerator: tuple[str, str]
    denominator: tuple[str, str]
    threshold: float
    factor: float = 1.0


@dataclass
class Preset:
    scenarios: list[Scenario]
    targets: list[Target] = field(default_factory=list)


def _activation(k: int, aggregate: str = "mean", low_memory: bool = False) -> Method:
    suffix = f" {aggregate}" if aggregate != "mean" else ""
    suffix += " low-memory" if low_memory else ""
    return Method(f"activation k={k}{suffix}", "activation", k, aggregate, low_memory)


def targets_preset() -> Preset:
    """The scenarios behind the performance targets (see the README's Performance section)."""
    mlp_name, deep8, deep32, wperp_name = (
        "784-1024x3-10 b512",
        "784-1024x8-10 b1024",
        "784-1024x32-10 b1024",
        "40-512x3-10 b512 (MNIST-1D)",
    )
    memory_methods = (_activation(1), _activation(1, low_memory=True))
    scenarios = [
        Scenario(
            mlp_name,
            3,
            1024,
            512,
            (
                _activation(1),
                _activation(16),
                _activation(16, "projection"),
                _activation(1, low_memory=True),
                Method(
                    "activation k=1 rademacher", "activation", options=(("sampler", "rademacher"),)
                ),
                Method("wt k=1", "wt"),
                Method("weight k=1", "weight"),
            ),
        ),
        Scenario(deep8, 8, 1024, 1024, memory_methods, time=False, memory=True),
        Scenario(deep32, 32, 1024, 1024, memory_methods, time=False, memory=True),
        Scenario(
            wperp_name,
            3,
            512,
            512,
            (
                Method("wt", "wt"),
                Method("wperp rank 10", "wperp", options=(("rank", 10),)),
                Method(
                    "wperp rank 10 bf16 Gram",
                    "wperp",
                    options=(("rank", 10), ("gram_dtype", "bfloat16")),
                ),
            ),
            in_features=40,
        ),
    ]
    a1, a16 = _activation(1).label, _activation(16).label
    lm = _activation(1, low_memory=True).label
    targets = [
        Target(
            "activation k=1 step <= 1.0x backprop",
            "time",
            (mlp_name, a1),
            (mlp_name, "backprop"),
            1.0,
        ),
        Target(
            "activation k=16 <= 0.5x of 16 one-tangent steps",
            "time",
            (mlp_name, a16),
            (mlp_name, a1),
            0.5,
            factor=16,
        ),
        Target(
            "projection adds <= 10% to a k=16 step",
            "time",
            (mlp_name, _activation(16, "projection").label),
            (mlp_name, a16),
            1.10,
        ),
        Target(
            "depth 32: BP-free peak memory <= 0.25x backprop",
            "memory",
            (deep32, lm),
            (deep32, "backprop"),
            0.25,
        ),
        Target(
            "depth 32: BP-free peak memory <= 1.2x its own at depth 8",
            "memory",
            (deep32, lm),
            (deep8, lm),
            1.2,
        ),
        Target(
            "wperp (rank 10) step <= 5x a wt step, width 512",
            "time",
            (wperp_name, "wperp rank 10"),
            (wperp_name, "wt"),
            5.0,
        ),
        Target(
            "wperp (rank 10, bf16 Gram applies) step <= 5x a wt step, width 512",
            "time",
            (wperp_name, "wperp rank 10 bf16 Gram"),
            (wperp_name, "wt"),
            5.0,
        ),
    ]
    return Preset(scenarios, targets)


def grid_preset(
    guesses: list[str],
    tangents: list[int],
    depths: list[int],
    widths: list[int],
    batches: list[int],
    memory: bool = True,
) -> Preset:
    """Every combination; each (depth, width, batch) is one scenario holding all guesses x k."""
    methods = tuple(Method(f"{g} k={k}", g, k) for g in guesses for k in tangents)
    scenarios = [
        Scenario(f"784-{w}x{d}-10 b{b}", d, w, b, methods, memory=memory)
        for d in depths
        for w in widths
        for b in batches
    ]
    return Preset(scenarios)


def models_preset(depth_scan: bool = True) -> Preset:
    """ResNet-18 and the ViT (3x32x32, batch 128): activation perturbation with k = 1 and 16
    against backprop and against the frog-style loop; peak memory of the low-memory mode."""
    resnet, vit = "ResNet-18 3x32x32 b128", "ViT 3x32x32 b128"
    vit6, vit24 = "ViT depth 6, 3x32x32 b128", "ViT depth 24, 3x32x32 b128"
    timed = (
        _activation(1),
        _activation(16),
        Method("frog-style loop k=16", "activation", 16, peer="frog-loop"),
    )
    low = _activation(1, low_memory=True)
    image = (3, 32, 32)
    scenarios = [
        Scenario(resnet, batch=128, methods=timed, model="resnet18", input_shape=image),
        Scenario(vit, batch=128, methods=timed, model="vit", input_shape=image),
        Scenario(
            resnet + " (memory)",
            batch=128,
            methods=(low,),
            model="resnet18",
            input_shape=image,
            time=False,
            memory=True,
        ),
    ]
    if depth_scan:
        scenarios += [
            Scenario(
                name,
                batch=128,
                methods=(low,),
                model="vit",
                input_shape=image,
                options=(("depth", depth),),
                time=False,
                memory=True,
            )
            for name, depth in ((vit6, 6), (vit24, 24))
        ]
    a1, a16, frog = (m.label for m in timed)
    targets = []
    for sc in (resnet, vit):
        short = sc.split(" ")[0]
        targets += [
            Target(
                f"{short}: activation k=1 step <= 1.5x backprop",
                "time",
                (sc, a1),
                (sc, "backprop"),
                1.5,
            ),
            Target(
                f"{short}: activation k=16 <= 0.5x of 16 one-tangent steps",
                "time",
                (sc, a16),
                (sc, a1),
                0.5,
                factor=16,
            ),
            Target(
                f"{short}: frog-style loop k=16 >= 1.7x our k=16 step",
                "time",
                (sc, a16),
                (sc, frog),
                1 / 1.7,
            ),
        ]
    targets.append(
        Target(
            "ResNet-18: low-memory peak memory <= 0.5x backprop",
            "memory",
            (resnet + " (memory)", low.label),
            (resnet + " (memory)", "backprop"),
            0.5,
        )
    )
    if depth_scan:
        targets.append(
            Target(
                "ViT: low-memory peak memory at depth 24 <= 1.2x its own at depth 6",
                "memory",
                (vit24, low.label),
                (vit6, low.label),
                1.2,
            )
        )
    return Preset(scenarios, targets)


PRESET_NAMES = ("targets", "models", "grid", "quick")
GRID_DEFAULTS = {
    "guesses": ["activation", "wt", "wperp", "weight"],
    "tangents": [1, 4, 16, 64],
    "depths": [2, 8, 32],
    "widths": [128, 512, 1024],
    "batches": [128, 1024],
}
QUICK = {
    "guesses": ["activation", "wt"],
    "tangents": [1, 4],
    "depths": [2],
    "widths": [32],
    "batches": [16],
}
