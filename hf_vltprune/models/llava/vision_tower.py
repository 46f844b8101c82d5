"""Running a CLIP-style vision tower only as deep as LLaVA reads it, with a token reducer in its layers.

Stock LLaVA runs every layer and then reads the penultimate one; here the tower stops at the deepest selected
feature layer. The layers are the stock modules: a layer that does not reduce is called as is, so a tower without a
reducer computes exactly what the stock one does.
"""

from __future__ import annotations

import torch
from torch import nn

from ...attention import attend
from ...reduce import LayerMetric, TokenReducer, TokenState


def attention_heads(attention: nn.Module, hidden: torch.Tensor, projection: nn.Linear) -> torch.Tensor:
    """`[B, H, N, d]` one projection of a CLIP attention module, split into heads."""
    batch, length, _ = hidden.shape
    return projection(hidden).view(batch, length, attention.num_heads, attention.head_dim).transpose(1, 2)


def reducing_layer_forward(layer: nn.Module, state: TokenState, reducer: TokenReducer, layer_idx: int,
                           implementation: str, proportional: bool) -> TokenState:
    """A pre-LN CLIP layer, `x + SelfAttn(LN1(x))` -> reduce -> `x + MLP(LN2(x))`, with the size bias in attention."""
    attention, hidden = layer.self_attn, state.hidden
    normed = layer.layer_norm1(hidden)
    queries, keys, values = (attention_heads(attention, normed, projection)
                             for projection in (attention.q_proj, attention.k_proj, attention.v_proj))
    dropout = attention.dropout if attention.training else 0.0
    context, _ = attend(queries, keys, values, state.attention_bias(hidden.dtype, proportional), dropout,
                        implementation)
    context = context.transpose(1, 2).reshape(hidden.shape)
    state = state.with_hidden(hidden + attention.out_proj(context))
    if reducer.reduces_at(layer_idx):
        state = reducer(layer_idx, state, LayerMetric(queries=queries, keys=keys, values=values))
    return state.with_hidden(state.hidden + layer.mlp(layer.layer_norm2(state.hidden)))


def cls_attention_and_keys(layer: nn.Module, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The [CLS] token's attention over the other tokens in `layer` (head average) and their keys (heads
    concatenated), from the layer's input `[B, N, C]`. Only the [CLS] query row is computed."""
    attention = layer.self_attn
    normed = layer.layer_norm1(hidden)
    keys = attention_heads(attention, normed, attention.k_proj)
    cls_query = attention_heads(attention, normed[:, :1], attention.q_proj)
    weights = (cls_query @ keys.transpose(-1, -2) * attention.scale).float().softmax(dim=-1)  # [B, H, 1, N]
    return weights.mean(dim=1)[:, 0, 1:], keys.transpose(1, 2).flatten(2)[:, 1:]


def run_vision_tower(tower: nn.Module, pixel_values: torch.Tensor, layers_run: int,
                     reducer: TokenReducer | None = None, proportional: bool = True) -> list[torch.Tensor]:
    """Hidden states of a `CLIPVisionModel`-like tower: `[embeddings, layer 0 output, ..., layer layers_run-1
    output]`, each `[B, N_i, C]` (`N_i` shrinks where `reducer` removes tokens; CLS stays first)."""
    hidden = tower.pre_layrnorm(tower.embeddings(pixel_values))
    states = [hidden]
    if reducer is not None:
        state = reducer.start(TokenState(hidden))
    # Reducing layers attend through `attend` (SDPA or eager, with the size bias); other kernels fall back to SDPA.
    implementation = tower.config._attn_implementation
    implementation = implementation if implementation in ("sdpa", "eager") else "sdpa"
    for layer_idx, layer in enumerate(tower.encoder.layers[:layers_run]):
        if reducer is None:
            hidden = layer(hidden, None)
        else:
            state = reducer.before_layer(layer_idx, state)
            state = reducing_layer_forward(layer, state, reducer, layer_idx, implementation, proportional)
            hidden = state.drop_guides().hidden
        states.append(hidden)
    return states
