"""Dropping visual tokens between a language model's decoder layers (FastV, PyramidDrop), with the KV cache.

Forward pre-hooks on the stock decoder layers: the layer before a drop scores the visual tokens by the attention
its last prompt token pays them (that one query row only, so the layers keep their fused attention), the dropping
layer removes the others from the hidden states, and every later layer gets the attention mask and rotary
embeddings of the tokens that are left. The KV cache of those layers then holds only the kept tokens; decoding
steps read from the cache which prompt tokens each layer kept.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers.models.llama.modeling_llama import rotate_half

from ...reduce.fastv import FastVReducer, top_visual_tokens
from .sequence import KeptTokens, kept_tokens, pads_left


@dataclass
class DropPass:
    """One forward pass of the language model.

    key_mask: `[B, W]` bool, the 2-D attention mask the language model got (`W` = cached plus new tokens).
    prefill_length: prompt tokens the language model reads in prefill (`P`).
    stages: first layer of each stage -> the prompt tokens its layers keep (`KeptTokens` into the `P` tokens);
        filled by the prefill, read by decoding steps.
    visual, guide, num_visual: prefill only: `[B, P]` visual tokens, `[B]` the last prompt token, `[B]` visual
        token count per sample.
    current, pending, views: while the pass runs: the tokens flowing now, the choice the next stage applies, and
        each stage's attention mask and rotary embeddings (built once per stage).
    """

    key_mask: torch.Tensor
    prefill_length: int
    stages: dict[int, KeptTokens] = field(default_factory=dict)
    visual: torch.Tensor | None = None
    guide: torch.Tensor | None = None
    num_visual: torch.Tensor | None = None
    current: KeptTokens | None = None
    pending: KeptTokens | None = None
    views: dict = field(default_factory=dict)

    @property
    def is_prefill(self) -> bool:
        return self.visual is not None


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding of `[B, H, N, d]` queries or keys with `[B, N, d]` cos/sin (Llama convention)."""
    return x * cos[:, None] + rotate_half(x) * sin[:, None]


def last_token_attention(layer: nn.Module, hidden: torch.Tensor, position_embeddings, guide: torch.Tensor,
                         allowed: torch.Tensor) -> torch.Tensor:
    """`[B, N]` attention (head average) of each sample's `guide` token over the `[B, N, D]` tokens in `layer`,
    computing only that query row; `allowed` `[B, N]` masks the keys it may not see."""
    attention = layer.self_attn
    batch, length, _ = hidden.shape
    head_dim = attention.head_dim
    normed = layer.input_layernorm(hidden)
    rows = torch.arange(batch, device=hidden.device)
    query = attention.q_proj(normed[rows, guide]).view(batch, 1, -1, head_dim).transpose(1, 2)
    keys = attention.k_proj(normed).view(batch, length, -1, head_dim).transpose(1, 2)
    cos, sin = (t.expand(batch, -1, -1) for t in position_embeddings)
    query = apply_rotary(query, cos[rows, guide][:, None], sin[rows, guide][:, None])
    keys = apply_rotary(keys, cos, sin).repeat_interleave(query.shape[1] // keys.shape[1], dim=1)
    scores = (query @ keys.transpose(-1, -2)).float() * getattr(attention, "scaling", head_dim ** -0.5)
    scores = scores.masked_fill(~allowed[:, None, None, :], float("-inf"))
    return scores.softmax(dim=-1).mean(dim=1)[:, 0]


def attention_view(query_index: torch.Tensor, key_index: torch.Tensor, key_valid: torch.Tensor,
                   like: torch.Tensor | None, implementation: str) -> torch.Tensor:
    """The `[B, 1, Q, K]` causal mask between query and key tokens given by their positions in the prompt; the
    queries are the last `Q` keys.

    Each query may always see itself, so no row is empty (padding rows would otherwise produce NaN). That is the
    query's own slot: padding slots repeat a real token's position and must stay invisible to it."""
    allowed = (key_index[:, None, :] <= query_index[:, :, None]) & key_valid[:, None, :]
    queries, keys = query_index.shape[1], key_index.shape[1]
    slots = torch.arange(keys, device=allowed.device)
    allowed |= slots[None, :] == (keys - queries + torch.arange(queries, device=allowed.device))[:, None]
    allowed = allowed[:, None]
    if (like is not None and like.dtype == torch.bool) or (like is None and implementation != "eager"):
        return allowed
    dtype = like.dtype if like is not None else torch.float32
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)


class LanguageModelDropper:
    """Installs the pre-hooks on `layers` for `reducer`'s stages; they act only inside `active(...)`."""

    def __init__(self, layers: nn.ModuleList, reducer: FastVReducer, text_config):
        self.reducer = reducer
        self.text_config = text_config  # its attention implementation decides the mask format
        self.stage_layers = sorted(reducer.schedule)
        self.run: DropPass | None = None
        for layer_idx in range(self.stage_layers[0] - 1, len(layers)):
            layers[layer_idx].register_forward_pre_hook(self._hook(layer_idx), with_kwargs=True)

    @property
    def implementation(self) -> str:
        return self.text_config._attn_implementation

    @contextmanager
    def active(self, run: DropPass):
        if self.implementation not in ("sdpa", "eager"):
            raise ValueError(f"Method {self.reducer.method_name!r} drops tokens inside the language model with 4-D "
                             f"attention masks: attn_implementation must be 'sdpa' or 'eager', got "
                             f"{self.implementation!r}.")
        self.run = run
        try:
            yield run
        finally:
            self.run = None

    def _hook(self, layer_idx: int):
        def hook(layer, args, kwargs):
            run = self.run
            if run is None or not self.reducer.enabled:
                return None
            hidden = args[0] if args else kwargs.pop("hidden_states")
            if run.is_prefill and layer_idx in self.reducer.schedule:
                hidden = run.pending.gather(hidden)
                run.current = run.current.then(run.pending) if run.current is not None else run.pending
                run.stages[layer_idx] = run.current
                run.pending = None
            if layer_idx >= self.stage_layers[0]:
                kwargs.update(self._layer_inputs(run, layer_idx, kwargs))
            if run.is_prefill and layer_idx + 1 in self.reducer.schedule:
                run.pending = self._choose(run, layer, layer_idx + 1, hidden, kwargs["position_embeddings"])
            return (hidden, *args[1:]), kwargs

        return hook

    def _layer_inputs(self, run: DropPass, layer_idx: int, kwargs: dict) -> dict:
        """Attention mask, rotary embeddings and position ids of the tokens left at this layer."""
        stage_start = max(layer for layer in self.stage_layers if layer <= layer_idx)
        if stage_start in run.views:
            return run.views[stage_start]
        kept, mask = run.stages[stage_start], kwargs.get("attention_mask")
        if run.is_prefill:
            key_index, key_valid = kept.index, kept.valid & run.key_mask.gather(1, kept.index)
            cos, sin = (t.expand(kept.index.shape[0], -1, -1) for t in kwargs["position_embeddings"])
            view = {"position_embeddings": (kept.gather(cos), kept.gather(sin)),
                    "attention_mask": attention_view(key_index, key_index, key_valid, mask, self.implementation)}
            if kwargs.get("position_ids") is not None:
                view["position_ids"] = kept.gather(kwargs["position_ids"].expand(kept.index.shape[0], -1))
        else:  # decoding: the cache holds the kept prompt tokens, then every new token
            width, prefill = run.key_mask.shape[1], run.prefill_length
            new = torch.arange(prefill, width, device=kept.index.device).expand(kept.index.shape[0], -1)
            key_index = torch.cat([kept.index, new], dim=1)
            key_valid = torch.cat([kept.valid, torch.ones_like(new, dtype=torch.bool)], dim=1) & \
                run.key_mask.gather(1, key_index)
            queries = kwargs["position_embeddings"][0].shape[1]
            query_index = torch.arange(width - queries, width, device=new.device).expand(new.shape[0], -1)
            view = {"attention_mask": attention_view(query_index, key_index, key_valid, mask, self.implementation)}
        run.views[stage_start] = view
        return view

    def _choose(self, run: DropPass, layer: nn.Module, stage_layer: int, hidden: torch.Tensor,
                position_embeddings) -> KeptTokens:
        """Score the tokens flowing into `layer` by its last prompt token's attention; keep the best visual ones."""
        batch, length = hidden.shape[:2]
        current = run.current or KeptTokens(torch.arange(length, device=hidden.device).expand(batch, -1),
                                            torch.ones(batch, length, dtype=torch.bool, device=hidden.device))
        guide = (current.index == run.guide[:, None]).int().argmax(dim=1)
        allowed = current.valid & run.key_mask.gather(1, current.index) & \
            (current.index <= run.guide[:, None])
        scores = last_token_attention(layer, hidden, position_embeddings, guide, allowed)
        visual = run.visual.gather(1, current.index) & current.valid
        keep = top_visual_tokens(scores, visual, self.reducer.tokens_kept(stage_layer, run.num_visual))
        return kept_tokens(keep & current.valid, pads_left(run.key_mask))
