"""Mixture of experts: an MLP choice (``model/mlp=moe``) in which a router sends each token to ``top_k`` of
``n_experts`` gated MLPs, and adds their outputs weighted by the router's scores.

The routing rules of the open families are settings, not classes:

- **scoring**: ``softmax`` over all experts (Mixtral, Qwen3 MoE, gpt-oss) or an independent ``sigmoid`` per
  expert (DeepSeek-V3); ``normalize`` rescales the chosen top-k scores to sum to 1; ``routed_scale`` multiplies them
  (DeepSeek-V3: 2.5).
- **router_bias**: a bias on the router's logits (gpt-oss); **selection_bias**: DeepSeek-V3's per-expert bias
  added to the scores only to choose the experts (a buffer, balanced by a rule outside gradient descent, not a
  parameter), the weights staying the unbiased scores.
- **n_groups / top_groups**: DeepSeek-V3's group-limited routing: experts fall into ``n_groups`` equal groups, each
  group is scored by the sum of its two best scores, and a token's experts are chosen from its ``top_groups`` best
  groups only.
- **shared_experts**: experts every token goes through besides the routed ones (DeepSeek: one, as a gated MLP of
  ``shared_experts * hidden``); **first_dense**: the first layers keep a plain gated MLP of ``dense_hidden``
  (DeepSeek-V3: 3 layers of 18,432).
- **activation**: ``silu`` (SwiGLU experts) or ``clamped`` (gpt-oss: the gate clamped to ``limit`` from above and
  the up projection to ±``limit``, out = (up + 1) · gate · sigmoid(alpha · gate)); **expert_bias**: biases in each
  expert's two matrices (gpt-oss).

Dispatch is sparse: the (token, choice) pairs are sorted by expert and each expert multiplies only its own slice
of tokens (no expert sees a token it was not chosen for). ``aux_loss`` and ``z_loss`` weigh the load-balancing loss
(Switch Transformer: n_experts · Σ_e f_e · P_e, f_e the share of choices that went to expert e and P_e its mean
router probability) and the router z-loss (mean squared log-sum-exp of the logits); while training, each MoE layer
keeps its last values in ``losses`` and :func:`router_losses` gathers them for the training loss. The
load-balancing loss is 1 at perfect balance: transformers' ``load_balancing_loss_func`` sums the shares over the
``top_k`` slots, so its value (and a ``router_aux_loss_coef``) is ``top_k`` times this one's. DeepSeek-V3 balances
without it: ``bias_update_rate`` moves ``selection_bias`` after each optimizer step (:func:`update_selection_biases`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .hooks import HookPoint
from .mlp import SwiGLUMLP
from .registry import Annotated, Ge, Gt, OneOf, Settings, doc, register


@dataclass
class MoESettings(Settings):
    """A router over n_experts gated MLPs, top_k of them per token."""

    name: str = "moe"
    n_experts: Annotated[int, Gt(1), doc("routed experts per layer")] = 8
    top_k: Annotated[int, Gt(0), doc("experts each token goes to, at most n_experts")] = 2
    hidden: Annotated[int | None, Gt(0), doc("each expert's hidden width; null: SwiGLU's default for d_model")] = None
    scoring: Annotated[str, OneOf("softmax", "sigmoid"), doc("router scores: softmax over the experts (Mixtral) or "
                                                             "a sigmoid each (DeepSeek-V3)")] = "softmax"
    normalize: Annotated[bool, doc("rescale the chosen top-k scores to sum to 1")] = True
    routed_scale: Annotated[float, Gt(0), doc("the chosen scores times this (DeepSeek-V3: 2.5)")] = 1.0
    router_bias: Annotated[bool, doc("a bias on the router's logits (gpt-oss)")] = False
    selection_bias: Annotated[bool, doc("a per-expert bias (a buffer) added to the scores to choose experts only "
                                        "(DeepSeek-V3)")] = False
    n_groups: Annotated[int, Gt(0), doc("expert groups for group-limited routing (DeepSeek-V3: 8); 1: none")] = 1
    top_groups: Annotated[int, Gt(0), doc("groups a token's experts may come from (DeepSeek-V3: 4)")] = 1
    shared_experts: Annotated[int, Ge(0), doc("experts every token goes through, one gated MLP of shared_experts "
                                              "x hidden (DeepSeek: 1)")] = 0
    first_dense: Annotated[int, Ge(0), doc("the first layers keep a plain gated MLP (DeepSeek-V3: 3)")] = 0
    dense_hidden: Annotated[int | None, Gt(0), doc("the hidden width of those dense layers; null: SwiGLU's "
                                                   "default")] = None
    activation: Annotated[str, OneOf("silu", "clamped"), doc("silu: SwiGLU experts; clamped: gpt-oss's clamped "
                                                             "gate (up + 1) * gate * sigmoid(alpha * gate)")] = "silu"
    limit: Annotated[float, Gt(0), doc("clamped: the gate's upper bound and the up projection's range")] = 7.0
    alpha: Annotated[float, Gt(0), doc("clamped: the sigmoid's slope")] = 1.702
    expert_bias: Annotated[bool, doc("biases in each expert's matrices (gpt-oss)")] = False
    aux_loss: Annotated[float, Ge(0), doc("weight of the load-balancing loss added to the training loss; 0: "
                                          "off")] = 0.01
    z_loss: Annotated[float, Ge(0), doc("weight of the router z-loss added to the training loss; 0: off")] = 0.0
    bias_update_rate: Annotated[float, Ge(0), doc(
        "DeepSeek-V3's balancing without an auxiliary loss: after each optimizer step every expert's selection_bias "
        "moves by this much, up when it took fewer than its even share of the step's choices, down when more "
        "(DeepSeek-V3: 0.001); needs selection_bias; 0: off")] = 0.0
    SHARED = ("d_model", "bias")

    def problems(self, model):
        if self.top_k > self.n_experts:
            yield "top_k", self.top_k, f"at most n_experts={self.n_experts}"
        if self.n_experts % self.n_groups:
            yield "n_groups", self.n_groups, f"a divisor of n_experts={self.n_experts}"
        elif self.top_groups > self.n_groups:
            yield "top_groups", self.top_groups, f"at most n_groups={self.n_groups}"
        elif self.top_k > self.top_groups * (self.n_experts // self.n_groups):
            yield "top_k", self.top_k, (f"at most the experts of top_groups={self.top_groups} groups "
                                        f"({self.top_groups * (self.n_experts // self.n_groups)})")
        if self.bias_update_rate and not self.selection_bias:
            yield "bias_update_rate", self.bias_update_rate, "0 unless selection_bias=true (it moves that bias)"
        if self.first_dense > model.n_layers:
            yield "first_dense", self.first_dense, f"at most model.n_layers={model.n_layers}"

    def canonical(self, model):
        """The widths spelled out; the losses (training's alone) and what no layer reads (dense_hidden without dense
        layers, limit and alpha without the clamped gate) at null."""
        s = super().canonical(model)
        width = SwiGLUMLP.default_hidden(model.d_model)
        s.update(hidden=self.hidden or width, dense_hidden=(self.dense_hidden or width) if self.first_dense else None,
                 aux_loss=None, z_loss=None, bias_update_rate=None)
        if self.activation != "clamped":
            s.update(limit=None, alpha=None)
        return s


def _count(weight: int, bias: int = 0) -> dict:
    return {"weight": weight, "bias": bias}


@register("mlp", "moe", MoESettings)
class MixtureOfExperts(nn.Module):
    """A router and ``n_experts`` gated MLPs stacked in three tensors (``[n_experts, ...]``: FSDP shards them along
    the experts), plus optional shared experts. ``forward`` keeps the input's shape."""

    def __init__(self, d_model: int, n_experts: int = 8, top_k: int = 2, hidden: int | None = None,
                 bias: bool = False, scoring: str = "softmax", normalize: bool = True, routed_scale: float = 1.0,
                 router_bias: bool = False, selection_bias: bool = False, n_groups: int = 1, top_groups: int = 1,
                 shared_experts: int = 0, first_dense: int = 0, dense_hidden: int | None = None,
                 activation: str = "silu", limit: float = 7.0, alpha: float = 1.702, expert_bias: bool = False,
                 aux_loss: float = 0.01, z_loss: float = 0.0, bias_update_rate: float = 0.0, layer: int = 0):
        super().__init__()
        if not 0 < top_k <= n_experts or n_experts % n_groups or not 0 < top_groups <= n_groups:
            raise ValueError(f"top_k={top_k} of n_experts={n_experts} in n_groups={n_groups} (top_groups="
                             f"{top_groups}): top_k and top_groups must be positive and at most n_experts and "
                             "n_groups, and n_groups must divide n_experts")
        if scoring not in ("softmax", "sigmoid") or activation not in ("silu", "clamped"):
            raise ValueError(f"scoring must be softmax or sigmoid and activation silu or clamped; got {scoring!r}, "
                             f"{activation!r}")
        hidden = hidden or SwiGLUMLP.default_hidden(d_model)
        self.n_experts, self.top_k, self.hidden = n_experts, top_k, hidden
        self.scoring, self.normalize, self.routed_scale = scoring, normalize, routed_scale
        self.n_groups, self.top_groups = n_groups, top_groups
        self.activation, self.limit, self.alpha = activation, limit, alpha
        self.aux_weight, self.z_weight = aux_loss, z_loss
        self.layer = layer
        self.router = nn.Linear(d_model, n_experts, bias=router_bias)
        if selection_bias:
            self.register_buffer("selection_bias", torch.zeros(n_experts))
        else:
            self.selection_bias = None
        self.bias_update_rate = bias_update_rate
        # the choices each expert took since the last optimizer step (training, with bias_update_rate): not saved
        self.step_counts: torch.Tensor | None = None
        # each expert: [gate; up] (2 hidden x d_model) in, down (d_model x hidden) out
        self.w_in = nn.Parameter(torch.empty(n_experts, 2 * hidden, d_model))
        self.w_out = nn.Parameter(torch.empty(n_experts, d_model, hidden))
        self.in_bias = nn.Parameter(torch.zeros(n_experts, 2 * hidden)) if expert_bias else None
        self.out_bias = nn.Parameter(torch.zeros(n_experts, d_model)) if expert_bias else None
        self.shared = SwiGLUMLP(d_model, shared_experts * hidden, bias=bias) if shared_experts else None
        self.losses: dict[str, torch.Tensor] = {}  # the last training forward's router losses (unweighted)
        self.load: torch.Tensor | None = None  # the last evaluation forward's choices per expert
        # the routing's hook points (components/hooks.py): blocks.{l}.mlp.hook_router_logits, hook_expert_weights,
        # hook_expert_indices
        self.hook_router_logits, self.hook_expert_weights, self.hook_expert_indices = HookPoint(), HookPoint(), HookPoint()
        self.init_parameters()

    def init_parameters(self, std: float = 0.02, residual_std: float | None = None) -> None:
        """The experts' matrices N(0, std), their output matrices N(0, residual_std) (the model's residual
        projections' scaled std, GPT-2 style), their biases 0 (the router and shared experts are nn.Linear: the
        model initialises them)."""
        if self.w_in.is_meta:
            return
        nn.init.normal_(self.w_in, 0.0, std)
        nn.init.normal_(self.w_out, 0.0, std if residual_std is None else residual_std)
        for bias in (self.in_bias, self.out_bias):
            if bias is not None:
                nn.init.zeros_(bias)

    @classmethod
    def for_layer(cls, layer: int, d_model: int, first_dense: int = 0, dense_hidden: int | None = None,
                  bias: bool = False, **settings) -> nn.Module:
        """Layer ``layer``'s MLP: a plain gated MLP among the first ``first_dense`` layers, else the experts."""
        if layer < first_dense:
            return SwiGLUMLP(d_model, dense_hidden, bias=bias)
        return cls(d_model, bias=bias, first_dense=first_dense, dense_hidden=dense_hidden, layer=layer, **settings)

    def route(self, x: torch.Tensor, lead: tuple | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Router logits ``[N, E]`` (float32), the chosen experts ``[N, k]`` and their weights ``[N, k]``, of the
        tokens ``x`` ``[N, d_model]`` (``lead``: their [batch, pos], as the hook points see them; default [1, N]).
        A function on ``hook_router_logits`` may replace the logits the choice is made from; one on
        ``hook_expert_weights`` the chosen experts' weights; one on ``hook_expert_indices`` the chosen experts
        (their weights stay as they were)."""
        lead = tuple(lead) if lead is not None else (1, len(x))
        logits = self.router(x).float()
        if self.hook_router_logits.fns:
            logits = self.hook_router_logits(logits.view(*lead, -1)).reshape(len(x), -1)
        scores = logits.sigmoid() if self.scoring == "sigmoid" else logits.softmax(dim=-1)
        choice = scores if self.selection_bias is None else scores + self.selection_bias
        if self.n_groups > 1:
            grouped = choice.view(len(x), self.n_groups, -1)
            group_scores = grouped.topk(min(2, grouped.shape[-1]), dim=-1).values.sum(dim=-1)
            keep = torch.zeros_like(group_scores, dtype=torch.bool)
            keep.scatter_(1, group_scores.topk(self.top_groups, dim=-1).indices, True)
            choice = grouped.masked_fill(~keep[..., None], float("-inf")).view(len(x), -1)
        experts = choice.topk(self.top_k, dim=-1).indices
        weights = scores.gather(1, experts)
        if self.normalize:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        weights = weights * self.routed_scale
        if self.hook_expert_weights.fns:
            weights = self.hook_expert_weights(weights.view(*lead, -1)).reshape(len(x), -1)
        if self.hook_expert_indices.fns:
            experts = self.hook_expert_indices(experts.view(*lead, -1)).reshape(len(x), -1)
        return logits, experts, weights

    def experts(self) -> list[tuple]:
        """Each expert's (w_in, w_out, in_bias, out_bias): the stacked tensors split once (a backward through
        ``w_in[e]`` for each expert would scatter a gradient of the whole stack per expert)."""
        parts = [t.unbind(0) if t is not None else [None] * self.n_experts
                 for t in (self.w_in, self.w_out, self.in_bias, self.out_bias)]
        return list(zip(*parts))

    def expert(self, e: int, x: torch.Tensor, weights: tuple | None = None) -> torch.Tensor:
        """Expert ``e`` on the tokens ``x`` ``[n, d_model]`` (``weights``: its tensors from :meth:`experts`)."""
        w_in, w_out, in_bias, out_bias = weights or (self.w_in[e], self.w_out[e], *(
            None if b is None else b[e] for b in (self.in_bias, self.out_bias)))
        h = x @ w_in.t()
        if in_bias is not None:
            h = h + in_bias
        gate, up = h.chunk(2, dim=-1)
        if self.activation == "clamped":
            gate = gate.clamp(max=self.limit)
            h = (up.clamp(-self.limit, self.limit) + 1) * gate * torch.sigmoid(gate * self.alpha)
        else:
            h = F.silu(gate) * up
        out = h @ w_out.t()
        return out if out_bias is None else out + out_bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        logits, experts, weights = self.route(flat, shape[:-1])
        # sparse dispatch: the (token, choice) pairs sorted by expert; each expert reads its own contiguous slice
        order = experts.flatten().argsort(stable=True)
        tokens = order // self.top_k
        counts = torch.bincount(experts.flatten(), minlength=self.n_experts)
        picked = flat[tokens]
        outs, start = [], 0
        for e, (n, tensors) in enumerate(zip(counts.tolist(), self.experts())):
            if n:
                outs.append(self.expert(e, picked[start:start + n], tensors))
                start += n
        routed = torch.cat(outs) * weights.flatten()[order, None].to(flat.dtype)
        out = torch.zeros_like(flat).index_add_(0, tokens, routed)
        if self.shared is not None:
            out = out + self.shared(flat)
        if self.training and (self.aux_weight or self.z_weight):
            self.losses = self.router_losses(logits, counts)
        if self.training and self.bias_update_rate and self.selection_bias is not None:
            counts = counts.detach()
            self.step_counts = counts if self.step_counts is None else self.step_counts + counts
        elif not self.training:
            self.load = counts.detach()
        return out.view(shape)

    def router_losses(self, logits: torch.Tensor, counts: torch.Tensor) -> dict[str, torch.Tensor]:
        """Load balance n_experts · Σ_e f_e · P_e (f_e: the share of choices that went to expert e; P_e: its mean
        probability, sigmoid scores normalised per token), the z-loss mean(logsumexp(logits)²), and ``weighted``:
        their sum weighted by ``aux_loss`` and ``z_loss``."""
        if self.scoring == "sigmoid":
            probs = logits.sigmoid()
            probs = probs / probs.sum(dim=-1, keepdim=True)
        else:
            probs = logits.softmax(dim=-1)
        share = counts.to(probs.dtype) / counts.sum()
        balance = self.n_experts * (share * probs.mean(dim=0)).sum()
        z = logits.logsumexp(dim=-1).square().mean()
        return {"load_balance": balance, "z": z, "weighted": self.aux_weight * balance + self.z_weight * z}

    @classmethod
    def formula(cls, d_model, n_experts=8, top_k=2, hidden=None, bias=False, router_bias=False, shared_experts=0,
                expert_bias=False, layer=None, first_dense=0, dense_hidden=None, **_) -> dict:
        """One layer's parameters (``layer``: which; the first ``first_dense`` are plain gated MLPs)."""
        if layer is not None and layer < first_dense:
            return SwiGLUMLP.formula(d_model, dense_hidden, bias)
        hidden = hidden or SwiGLUMLP.default_hidden(d_model)
        out = {
            "router": _count(d_model * n_experts, n_experts if router_bias else 0),
            "experts": _count(n_experts * 3 * hidden * d_model, n_experts * (2 * hidden + d_model) if expert_bias else 0),
        }
        if shared_experts:
            shared = SwiGLUMLP.formula(d_model, shared_experts * hidden, bias)
            out["shared"] = _count(sum(p["weight"] for p in shared.values()), sum(p["bias"] for p in shared.values()))
        return out

    @classmethod
    def layer_spans(cls, n_layers: int, first_dense: int = 0, **_) -> list[tuple[int, int]]:
        """(a layer, how many are built like it): the first dense layers, then the experts."""
        dense = min(first_dense, n_layers)
        return [(layer, n) for layer, n in ((0, dense), (dense, n_layers - dense)) if n]

    @classmethod
    def active_formula(cls, d_model, n_experts=8, top_k=2, layer=None, first_dense=0, **settings) -> dict:
        """What one token uses of layer ``layer``: the router, the shared experts and ``top_k`` routed experts."""
        full = cls.formula(d_model, n_experts, top_k, layer=layer, first_dense=first_dense, **settings)
        if "experts" in full:
            full["experts"] = {part: n // n_experts * top_k for part, n in full["experts"].items()}
        return full


def router_losses(model: nn.Module) -> dict[str, torch.Tensor]:
    """The router losses of every MoE layer's last training forward: ``weighted`` (summed over layers: what the
    training loss adds) and ``load_balance`` and ``z`` (averaged over layers: what is logged). Empty without MoE
    layers or with both weights 0."""
    layers = [m.losses for m in model.modules() if isinstance(m, MixtureOfExperts) and m.losses]
    if not layers:
        return {}
    out = {"weighted": torch.stack([lo["weighted"] for lo in layers]).sum()}
    for key in ("load_balance", "z"):
        out[key] = torch.stack([lo[key] for lo in layers]).mean()
    for m in model.modules():
        if isinstance(m, MixtureOfExperts):
            m.losses = {}
    return out


@torch.no_grad()
def update_selection_biases(model: nn.Module) -> float | None:
    """DeepSeek-V3's auxiliary-loss-free balancing, once per optimizer step: each MoE layer with a
    ``bias_update_rate`` moves its ``selection_bias`` by that rate, up for the experts that took fewer than the mean
    number of the step's choices and down for those that took more (the choices summed over every process first, so
    all processes keep the same biases). Returns the largest relative overload over those layers, max_e (c_e - c̄) /
    c̄ (0: perfectly even), or None when no layer updates."""
    violation = None
    for m in model.modules():
        if not isinstance(m, MixtureOfExperts) or m.step_counts is None:
            continue
        counts = m.step_counts.float()
        m.step_counts = None
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(counts)
        mean = counts.mean()
        m.selection_bias.add_(m.bias_update_rate * torch.sign(mean - counts).to(m.selection_bias.dtype))
        worst = float((counts.max() - mean) / mean) if mean > 0 else 0.0
        violation = worst if violation is None else max(violation, worst)
    return violation


def expert_loads(model: nn.Module) -> torch.Tensor | None:
    """The choices each expert took in the last evaluation forward, ``[MoE layers, n_experts]`` (None without MoE
    layers or before one ran), read once."""
    layers = [m for m in model.modules() if isinstance(m, MixtureOfExperts) and m.load is not None]
    if not layers or len({len(m.load) for m in layers}) > 1:
        return None
    loads = torch.stack([m.load for m in layers])
    for m in layers:
        m.load = None
    return loads
