"""Methods that exist only as probes in these experiments, so are no registered guesses: Wᵀ with
powered singular values, the cosine-matched directional descent (it reads the true gradient),
the unit-norm scaling of a guess that the paper's 1-step effectiveness uses, and the guesses of
a ViT's prompt tokens (Wᵀ of the first layer that reads them, and isotropic tangents on them)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ...core.context import SiteContext
from ...core.next_layer import NormJacobian
from ...diagnostics import weight_gradients
from ...estimation import Estimator
from ...guesses import Guess
from ...guesses.base import isotropic_site_tangents
from .maths import cosine_matched_direction, powered_matrix


class PoweredWTranspose(Guess):
    """Wᵀ with the next layer's singular values raised to a power (Singhal et al. Sec. 4.1):
    ``u = M_i (U S^p Vᵀ)ᵀ eps``, ``eps ~ N(0, I)``, rescaled to keep ``||W_{i+1}||_F``
    (:func:`powered_matrix`). p = 1 is Wᵀ. The last site is isotropic."""

    name = "wt-power"
    summary = "Wᵀ with the singular values of W_{i+1} raised to a power p (p = 1: Wᵀ)"
    paper = "Singhal et al. 2023"
    needs_next_layer = True

    def __init__(self, power: float) -> None:
        super().__init__()
        self.power = float(power)

    def site_tangents(self, ctx: SiteContext, k: int, generator: torch.Generator) -> Tensor:
        if ctx.is_last:
            return isotropic_site_tangents(ctx, k, generator)
        nxt = ctx.plan.next_site(ctx.index)
        assert nxt is not None
        w = powered_matrix(nxt.weight.detach(), self.power)
        eps = torch.randn(
            k, ctx.batch_size, w.shape[0], generator=generator, device=generator.device
        ).to(w.dtype)
        return (eps @ w) * ctx.act_grad


def powered_wt_estimator(model: nn.Module, power: float, seed: int) -> Estimator:
    """An :class:`Estimator` whose guess is :class:`PoweredWTranspose` (the engine, aggregation
    and bookkeeping are the library's own; only the tangent law is replaced)."""
    return Estimator(model, PoweredWTranspose(power), seed=seed)


class CosineMatchedEstimator(Estimator):
    """Directional descent whose cosine to the true gradient is fixed (Singhal et al. A.2).

    Each step draws ``v ~ N(0, I)`` over all parameters and returns
    ``relative_norm * ||g|| * d`` with ``d`` = :func:`cosine_matched_direction` (g, v, cosine):
    unbiased up to a scale (the part across g has a symmetric law), every draw exactly at the
    given cosine, and as long as ``relative_norm`` times the gradient. That is the JVP-scaled
    guess ``(g · d') d'`` with ``||d'||² = relative_norm / cosine``. It reads the true gradient
    by construction: a probe of bias against variance, not a backprop-free method.
    """

    def __init__(
        self, model: nn.Module, cosine: float, relative_norm: float = 1.0, seed: int = 0
    ) -> None:
        super().__init__(model, "backprop", seed=seed)
        if not 0.0 < cosine <= 1.0:
            raise ValueError(f"the matched cosine must be in (0, 1]; got {cosine}")
        if not relative_norm > 0:
            raise ValueError(f"relative_norm must be > 0; got {relative_norm}")
        self.guess_name = "cosine-matched"
        self.cosine = float(cosine)
        self.relative_norm = float(relative_norm)

    def estimate(
        self, x: Tensor, targets: Tensor, loss_fn=None
    ) -> tuple[Tensor, dict[nn.Parameter, Tensor]]:
        loss, true = super().estimate(x, targets, loss_fn)  # the oracle: guess "backprop"
        params = list(true)
        g = torch.cat([true[p].flatten() for p in params])
        noise = torch.randn(g.shape, generator=self.generator, device=self.generator.device)
        direction = cosine_matched_direction(g, noise, self.cosine)
        flat = (direction * (self.relative_norm * g.double().norm())).to(g.dtype)
        pieces = flat.split([p.numel() for p in params])
        return loss, {p: piece.view_as(p) for p, piece in zip(params, pieces)}


class UnitGuess:
    """An estimator's guess as the paper scales directional descent: its direction u made a
    unit vector, times the JVP, ``(g · u) u``.

    ``g · u`` is exactly the directional derivative a JVP along u returns; it is read here from
    the backprop oracle, which gives the same number without a second engine pass. Only for
    :func:`~forwardgrad.diagnostics.one_step_effectiveness`, which needs ``model``,
    ``loss_fn`` and ``estimate``.
    """

    def __init__(self, estimator: Estimator) -> None:
        self.estimator = estimator
        self.model, self.loss_fn = estimator.model, estimator.loss_fn

    def estimate(self, x: Tensor, targets: Tensor) -> tuple[Tensor, dict[nn.Parameter, Tensor]]:
        loss, est = self.estimator.estimate(x, targets)
        _, true = weight_gradients(self.model, x, targets, self.loss_fn)
        params = list(est)
        u = torch.cat([est[p].flatten().double() for p in params])
        u = u / u.norm().clamp_min(1e-300)
        g = torch.cat([true[p].flatten().double() for p in params])
        pieces = ((g @ u) * u).split([p.numel() for p in params])
        return loss, {p: piece.view_as(p).to(p.dtype) for p, piece in zip(params, pieces)}


PROMPT_LAWS = {"wt": "wt-prompt", "isotropic": "activation-prompt"}


class PromptTokenGuess(Guess):
    """Tangents on the prompt tokens of a :class:`~forwardgrad.models.vit.ViT` built with
    ``prompts=P`` and zero on every other token, at the site that outputs them (the patch
    embedding; any other site, e.g. a trained head, gets isotropic tangents).

    The library's ``wt`` finds no next layer there: the embedding's output goes to the first
    block's LayerNorm and to its residual add (as the pass's last site it then draws isotropic
    tangents over every token, as ``activation`` does). The paper's Wᵀ for prompts guesses "the
    gradient of the prompt" through the first layer that reads it, so per prompt token ``p``

    * ``law="wt"``: ``u_p = J_LN(x_p)ᵀ W_qkvᵀ eps``, ``eps ~ N(0, I_{3 dim})``, with J_LN the
      first block's ``norm1`` Jacobian at the token (closed form, ``NormJacobian``) and
      W_qkv its attention's fused q/k/v projection; the residual path is not part of it, as the
      MLP Wᵀ leaves out everything but the next weight matrix;
    * ``law="isotropic"``: ``u_p = eps ~ N(0, I_dim)``, activation perturbation restricted to
      the prompt rows (the library's ``activation`` perturbs every token of that output).

    Only the prompts are trained, so the other tokens' rows of the activity carry nothing the
    prompts' local gradient reads; tangents there would only add to the JVP's variance. Drawn
    per example, like every activity guess; no autograd graph (closed forms only).
    """

    summary = "prompt tokens of a ViT: Wᵀ of the first layer that reads them, or isotropic"
    paper = "Singhal et al. 2023 (A.5)"

    def __init__(self, model: nn.Module, law: str = "wt") -> None:
        super().__init__()
        if law not in PROMPT_LAWS:
            raise ValueError(f"unknown prompt law {law!r}; choose one of {list(PROMPT_LAWS)}")
        embed = getattr(model, "embed", None)
        if getattr(embed, "prompts", None) is None:
            raise ValueError("PromptTokenGuess needs a ViT built with prompts >= 1")
        if any(m.p > 0 for m in model.modules() if isinstance(m, nn.Dropout)):
            # the first layer would read a masked copy of the tokens, not the tokens
            raise ValueError("PromptTokenGuess needs a ViT without dropout")
        self.name = PROMPT_LAWS[law]
        self.law = law
        self.embedding = embed
        self.norm = model.blocks[0].norm1
        self.qkv = model.blocks[0].attn.qkv
        # PatchEmbedding inserts the prompts right after the class token
        self.rows = slice(1, 1 + embed.prompts.shape[1])

    def site_tangents(self, ctx: SiteContext, k: int, generator: torch.Generator) -> Tensor:
        if ctx.site.module is not self.embedding:
            return isotropic_site_tangents(ctx, k, generator)
        tokens = ctx.preact[:, self.rows]  # (B, P, dim)
        if self.law == "wt":
            w = self.qkv.weight.detach()  # (3 dim, dim)
            eps = torch.randn(
                k, *tokens.shape[:-1], w.shape[0], generator=generator, device=generator.device
            ).to(w.dtype)
            on_prompts = NormJacobian(self.norm, tokens).adjoint(eps @ w)
        else:
            on_prompts = torch.randn(
                k, *tokens.shape, generator=generator, device=generator.device
            ).to(tokens.dtype)
        u = torch.zeros(k, *ctx.preact.shape, dtype=ctx.preact.dtype, device=ctx.preact.device)
        u[:, :, self.rows] = on_prompts
        return u

    def expected_gradient(self, prompt_gradient: Tensor) -> Tensor:
        """E[ĝ] of the forward gradient, ``E[u_p u_pᵀ] g_p`` per prompt token, where ``g``
        (1, P, dim) is the true gradient of the prompts: ``J_pᵀ J_p g_p`` for ``law="wt"``
        (``J_p = W_qkv J_LN(x_p)``), ``g`` itself for the isotropic law.

        Each example's estimate is ``(g_b · u_b) u_b``, whose mean is ``E[u uᵀ] g_b``; a prompt
        token is the same vector in every example (it depends on no input and takes no
        position embedding), so J_p is too, and the sum over the batch is ``J_pᵀ J_p g``: Wᵀ is
        biased by that matrix, the isotropic law is not."""
        if self.law != "wt":
            return prompt_gradient.clone()
        return self._gram(self.embedding.prompts.detach(), prompt_gradient.unsqueeze(0))[0]

    def second_moments(self) -> Tensor:
        """``E[u_p u_pᵀ]`` per prompt token, (P, dim, dim): ``J_pᵀ J_p`` for ``law="wt"`` (of
        rank at most dim - 2: J_LN projects out the token's mean and its normalised self), the
        identity for the isotropic law."""
        tokens = self.embedding.prompts.detach()[0]  # (P, dim)
        count, dim = tokens.shape
        identity = torch.eye(dim, dtype=tokens.dtype, device=tokens.device)
        if self.law != "wt":
            return identity.expand(count, dim, dim).clone()
        columns = self._gram(tokens, identity[:, None, :].expand(dim, count, dim))
        return columns.permute(1, 2, 0)  # (P, dim, dim): column i is J_pᵀ J_p e_i

    def _gram(self, tokens: Tensor, v: Tensor) -> Tensor:
        """``J_LNᵀ W_qkvᵀ W_qkv J_LN v`` at ``tokens (B, *S)`` for ``v (N, B, *S)``."""
        w = self.qkv.weight.detach()
        norm = NormJacobian(self.norm, tokens)
        return norm.adjoint((norm.apply(v) @ w.T) @ w)


def prompt_estimator(model: nn.Module, law: str, seed: int, tangents: int = 1) -> Estimator:
    """An :class:`Estimator` whose guess is :class:`PromptTokenGuess` (engine, aggregation and
    local rules are the library's own; only the tangent law is replaced)."""
    return Estimator(model, PromptTokenGuess(model, law), tangents=tangents, seed=seed)
