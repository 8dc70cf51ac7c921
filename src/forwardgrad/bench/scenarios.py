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
    and ``options`` (the builder's keyword arguments). ``lora`` and ``trainable`` make it a
    fine-tuning scenario: every other parameter is frozen, for backprop as for the estimators."""

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
    lora: tuple[str, ...] = ()  # LoRA adapters (default rank, alpha) on the matching Linears
    trainable: tuple[str, ...] = ()  # fine-tuning: train only these parameters (and the adapters)

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


# Scenario names, shared by a preset's scenarios and the targets that refer to them.
_MLP = "784-1024x3-10 b512"
_DEEP8 = "784-1024x8-10 b1024"
_DEEP32 = "784-1024x32-10 b1024"
_WPERP = "40-512x3-10 b512 (MNIST-1D)"
_RESNET = "ResNet-18 3x32x32 b128"
_RESNET_MEMORY = _RESNET + " (memory)"
_VIT = "ViT 3x32x32 b128"
_VIT6 = "ViT depth 6, 3x32x32 b128"
_VIT24 = "ViT depth 24, 3x32x32 b128"
_CNN = "LeNet 1x28x28 b128 (next-layer guesses on conv sites)"
_IMAGE = (3, 32, 32)
_IMAGE_BATCH = 128

_A1, _A16 = _activation(1).label, _activation(16).label
_LOW = _activation(1, low_memory=True)
_FROG = Method("frog-style loop k=16", "activation", 16, peer="frog-loop")


def _image_scenario(
    name: str,
    model: str,
    methods: tuple[Method, ...],
    memory_only: bool = False,
    options: tuple[tuple[str, object], ...] = (),
) -> Scenario:
    """An image model on 3x32x32 inputs, batch 128: timed, or measured for peak memory only."""
    return Scenario(
        name,
        batch=_IMAGE_BATCH,
        methods=methods,
        model=model,
        input_shape=_IMAGE,
        options=options,
        time=not memory_only,
        memory=memory_only,
    )


def _activation_step_targets(scenario: str, prefix: str, limit: float) -> list[Target]:
    """The two targets of every timed activation scenario: a k=1 step against backprop, and a
    k=16 step against 16 one-tangent steps."""
    return [
        Target(
            f"{prefix}activation k=1 step <= {limit}x backprop",
            "time",
            (scenario, _A1),
            (scenario, "backprop"),
            limit,
        ),
        Target(
            f"{prefix}activation k=16 <= 0.5x of 16 one-tangent steps",
            "time",
            (scenario, _A16),
            (scenario, _A1),
            0.5,
            factor=16,
        ),
    ]


def _performance_scenarios() -> list[Scenario]:
    """The MLPs of the targets preset: one timed at depth 3, two for memory, one for W~perp."""
    memory_methods = (_activation(1), _LOW)
    mlp_methods = (
        _activation(1),
        _activation(16),
        _activation(16, "projection"),
        _LOW,
        Method("activation k=1 rademacher", "activation", options=(("sampler", "rademacher"),)),
        Method("wt k=1", "wt"),
        Method("weight k=1", "weight"),
    )
    wperp_methods = (
        Method("wt", "wt"),
        Method("wperp rank 10", "wperp", options=(("rank", 10),)),
        Method(
            "wperp rank 10 bf16 Gram", "wperp", options=(("rank", 10), ("gram_dtype", "bfloat16"))
        ),
    )
    return [
        Scenario(_MLP, 3, 1024, 512, mlp_methods),
        Scenario(_DEEP8, 8, 1024, 1024, memory_methods, time=False, memory=True),
        Scenario(_DEEP32, 32, 1024, 1024, memory_methods, time=False, memory=True),
        Scenario(_WPERP, 3, 512, 512, wperp_methods, in_features=40),
    ]


# (text, kind, numerator, denominator, threshold) of the targets preset beyond the step targets
_PERFORMANCE_TARGETS = (
    (
        "projection adds <= 10% to a k=16 step",
        "time",
        (_MLP, _activation(16, "projection").label),
        (_MLP, _A16),
        1.10,
    ),
    (
        "depth 32: BP-free peak memory <= 0.25x backprop",
        "memory",
        (_DEEP32, _LOW.label),
        (_DEEP32, "backprop"),
        0.25,
    ),
    (
        "depth 32: BP-free peak memory <= 1.2x its own at depth 8",
        "memory",
        (_DEEP32, _LOW.label),
        (_DEEP8, _LOW.label),
        1.2,
    ),
    (
        "wperp (rank 10) step <= 5x a wt step, width 512",
        "time",
        (_WPERP, "wperp rank 10"),
        (_WPERP, "wt"),
        5.0,
    ),
    (
        "wperp (rank 10, bf16 Gram applies) step <= 5x a wt step, width 512",
        "time",
        (_WPERP, "wperp rank 10 bf16 Gram"),
        (_WPERP, "wt"),
        5.0,
    ),
)


def targets_preset() -> Preset:
    """The scenarios behind the performance targets (see the README's Performance section)."""
    targets = _activation_step_targets(_MLP, "", 1.0)
    targets += [Target(*row) for row in _PERFORMANCE_TARGETS]
    return Preset(_performance_scenarios(), targets)


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


def _model_scenarios(depth_scan: bool) -> list[Scenario]:
    """ResNet-18 and the ViT timed, ResNet-18's memory, and the ViT's at two depths."""
    timed = (_activation(1), _activation(16), _FROG)
    scenarios = [
        _image_scenario(_RESNET, "resnet18", timed),
        _image_scenario(_VIT, "vit", timed),
        _image_scenario(_RESNET_MEMORY, "resnet18", (_LOW,), memory_only=True),
    ]
    if depth_scan:
        scenarios += [
            _image_scenario(name, "vit", (_LOW,), memory_only=True, options=(("depth", depth),))
            for name, depth in ((_VIT6, 6), (_VIT24, 24))
        ]
    return scenarios


def _model_targets(depth_scan: bool) -> list[Target]:
    """Per model the step targets and the frog-style loop's; then the memory targets."""
    targets = []
    for sc in (_RESNET, _VIT):
        short = sc.split(" ")[0]
        targets += _activation_step_targets(sc, f"{short}: ", 1.5)
        targets.append(
            Target(
                f"{short}: frog-style loop k=16 >= 1.7x our k=16 step",
                "time",
                (sc, _A16),
                (sc, _FROG.label),
                1 / 1.7,
            )
        )
    targets.append(
        Target(
            "ResNet-18: low-memory peak memory <= 0.5x backprop",
            "memory",
            (_RESNET_MEMORY, _LOW.label),
            (_RESNET_MEMORY, "backprop"),
            0.5,
        )
    )
    if depth_scan:
        targets.append(
            Target(
                "ViT: low-memory peak memory at depth 24 <= 1.2x its own at depth 6",
                "memory",
                (_VIT24, _LOW.label),
                (_VIT6, _LOW.label),
                1.2,
            )
        )
    return targets


def models_preset(depth_scan: bool = True) -> Preset:
    """ResNet-18 and the ViT (3x32x32, batch 128): activation perturbation with k = 1 and 16
    against backprop and against the frog-style loop; peak memory of the low-memory mode."""
    return Preset(_model_scenarios(depth_scan), _model_targets(depth_scan))


def conv_preset() -> Preset:
    """The LeNet-style cnn on 1x28x28 inputs, batch 128: the next-layer guesses on its conv
    sites (Wᵀ by the next convolution's transpose, W̃⊥ by the matrix-free solver) against
    activation perturbation and backprop. Reported; no target."""
    methods = (
        _activation(1),
        Method("wt", "wt"),
        Method("wperp rank 10", "wperp", options=(("rank", 10),)),
    )
    scenario = Scenario(
        _CNN, batch=_IMAGE_BATCH, methods=methods, model="cnn", input_shape=(1, 28, 28)
    )
    return Preset([scenario])


_FINETUNE_PROMPTS = "ViT 3x32x32 b128, 8 prompt tokens + head trained (memory)"
_FINETUNE_LORA = "ViT 3x32x32 b128, LoRA r=4 on every MLP Linear + head trained (memory)"


def finetune_preset() -> Preset:
    """Peak memory of fine-tuning a frozen ViT (the default, depth 6) by forward gradients
    against backprop fine-tuning of the same subset: prompt tuning (8 tokens) and LoRA on the
    MLP layers, the head trained in both. Backprop must keep every activation between the
    input and the last trained parameter; the low-memory estimator keeps one site's."""
    methods = (_activation(1), _LOW, Method("weight k=1", "weight"))
    common = dict(batch=_IMAGE_BATCH, methods=methods, model="vit", input_shape=_IMAGE)
    scenarios = [
        Scenario(
            _FINETUNE_PROMPTS,
            options=(("prompts", 8),),
            trainable=("embed.prompts", "head.*"),
            time=False,
            memory=True,
            **common,
        ),
        Scenario(
            _FINETUNE_LORA,
            lora=("blocks.*.mlp.0", "blocks.*.mlp.3"),
            trainable=("head.*",),
            time=False,
            memory=True,
            **common,
        ),
    ]
    targets = [
        Target(
            f"{what}: low-memory forward-gradient peak memory <= 0.5x backprop's",
            "memory",
            (name, _LOW.label),
            (name, "backprop"),
            0.5,
        )
        for what, name in (("prompt tuning", _FINETUNE_PROMPTS), ("LoRA", _FINETUNE_LORA))
    ]
    return Preset(scenarios, targets)


PRESET_NAMES = ("targets", "models", "conv", "finetune", "grid", "quick", "distributed")
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
