"""BLIP encoder layers that carry a `TokenState` and call a reducer between self-attention and the next sub-layer.

Each class subclasses the stock transformers class it replaces and keeps its parameter names, so stock checkpoints
load unchanged and transformers' output hooks (which match modules with `isinstance`) still record hidden states.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.models.blip.modeling_blip import BlipAttention, BlipEncoderLayer
from transformers.models.blip.modeling_blip_text import (
    BlipTextAttention,
    BlipTextLayer,
    BlipTextSelfAttention,
)

from ...attention import attend
from ...reduce import LayerMetric, TokenReducer, TokenState


class PrunedBlipAttention(BlipAttention):
    """Vision self-attention over SDPA (or eager) with an additive key bias; also returns queries and keys."""

    def forward(self, hidden_states, attention_bias=None, implementation="sdpa", **kwargs):
        batch, length, channels = hidden_states.shape
        qkv = self.qkv(hidden_states).reshape(batch, length, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        query, key, value = qkv.unbind(0)
        dropout = self.dropout.p if self.training else 0.0
        context, probs = attend(query, key, value, attention_bias, dropout, implementation)
        output = self.projection(context.transpose(1, 2).reshape(batch, length, channels))
        return output, probs, LayerMetric(queries=query, keys=key, values=value)


class PrunedBlipEncoderLayer(BlipEncoderLayer):
    """Pre-LN ViT layer: `x + SelfAttn(LN(x))` -> reduce -> `x + MLP(LN(x))`."""

    def __init__(self, config):
        super().__init__(config)
        self.self_attn = PrunedBlipAttention(config)

    def forward(self, hidden_states, state: TokenState, reducer=None, layer_idx=0, implementation="sdpa",
                proportional=True, **kwargs):
        # `hidden_states` is `state.hidden`; it is passed positionally so transformers' hooks record the tensor.
        bias = state.attention_bias(hidden_states.dtype, proportional)
        attn_out, _, metric = self.self_attn(self.layer_norm1(hidden_states), bias, implementation)
        state = state.with_hidden(hidden_states + attn_out)
        if reducer is not None and reducer.reduces_at(layer_idx):
            state = reducer(layer_idx, state, metric)
        hidden = state.hidden + self.mlp(self.layer_norm2(state.hidden))
        return hidden, state.with_hidden(hidden)


class PrunedBlipTextSelfAttention(BlipTextSelfAttention):
    """BERT-style (cross-)attention over SDPA with an additive key bias; no KV cache (encoders only)."""

    def forward(self, hidden_states, attention_bias=None, encoder_hidden_states=None, implementation="sdpa",
                **kwargs):
        batch, length, _ = hidden_states.shape
        source = encoder_hidden_states if encoder_hidden_states is not None else hidden_states

        def heads(x):
            return x.view(batch, x.shape[1], self.num_attention_heads, self.attention_head_size).transpose(1, 2)

        query, key, value = heads(self.query(hidden_states)), heads(self.key(source)), heads(self.value(source))
        dropout = self.dropout.p if self.training else 0.0
        context, probs = attend(query, key, value, attention_bias, dropout, implementation)
        context = context.transpose(1, 2).reshape(batch, length, self.all_head_size)
        return context, probs, LayerMetric(queries=query, keys=key, values=value)


class PrunedBlipTextAttention(BlipTextAttention):
    def __init__(self, config, is_cross_attention=False, layer_idx=None):
        super().__init__(config, is_cross_attention, layer_idx)
        self.self = PrunedBlipTextSelfAttention(config, is_cross_attention, layer_idx=layer_idx)

    def forward(self, hidden_states, attention_bias=None, encoder_hidden_states=None, implementation="sdpa",
                **kwargs):
        context, probs, metric = self.self(hidden_states, attention_bias, encoder_hidden_states, implementation)
        return self.output(context, hidden_states), probs, metric


class PrunedBlipTextLayer(BlipTextLayer):
    """Post-LN BERT layer: self-attention -> reduce -> cross-attention to the image -> feed-forward."""

    def __init__(self, config, layer_num):
        super().__init__(config, layer_num)
        self.attention = PrunedBlipTextAttention(config, layer_idx=layer_num)
        if config.is_decoder:
            self.crossattention = PrunedBlipTextAttention(config, is_cross_attention=True, layer_idx=layer_num)

    def forward(self, hidden_states, state: TokenState, encoder_hidden_states=None, encoder_bias=None,
                reducer=None, layer_idx=0, implementation="sdpa", proportional=True, **kwargs):
        bias = state.attention_bias(hidden_states.dtype, proportional)
        attn_out, _, metric = self.attention(hidden_states, bias, implementation=implementation)
        state = state.with_hidden(attn_out)
        if reducer is not None and reducer.reduces_at(layer_idx):
            state = reducer(layer_idx, state, metric)
        hidden = state.hidden
        if encoder_hidden_states is not None:
            hidden, _, _ = self.crossattention(hidden, encoder_bias, encoder_hidden_states, implementation)
        hidden = self.feed_forward_chunk(hidden)
        return hidden, state.with_hidden(hidden)


def run_encoder(layers: nn.ModuleList, reducer: TokenReducer | None, state: TokenState, **layer_kwargs) -> TokenState:
    """The loop both encoders share: reducer hooks around the layers, one `TokenState` threaded through."""
    if reducer is not None and not reducer.enabled:
        reducer = None
    if reducer is not None:
        state = reducer.start(state)
    for layer_idx, layer in enumerate(layers):
        if reducer is not None:
            state = reducer.before_layer(layer_idx, state)
        _, state = layer(state.hidden, state=state, reducer=reducer, layer_idx=layer_idx, **layer_kwargs)
    return reducer.finish(state) if reducer is not None else state


def build_reducer(pruning_config, modality: str, hidden_size: int, num_layers: int) -> TokenReducer | None:
    """The reducer of one encoder, or `None` when that encoder keeps every token (the stock computation)."""
    from ...reduce import get_reducer_class

    if not pruning_config.reduces(modality):
        return None
    reducer_class = get_reducer_class(pruning_config.method)
    schedule = pruning_config.keep_schedule(modality, num_layers)
    return reducer_class(schedule, hidden_size, num_layers, pruning_config.method_options)


class PrunedBlipVisionEncoder(nn.Module):
    """Replaces `BlipEncoder`; same parameter names (`layers.i`), plus `reducer` when the vision side reduces."""

    def __init__(self, config, pruning_config):
        super().__init__()
        self.config = config
        self.layers = nn.ModuleList([PrunedBlipEncoderLayer(config) for _ in range(config.num_hidden_layers)])
        self.reducer = build_reducer(pruning_config, "vision", config.hidden_size, config.num_hidden_layers)
        self.proportional_attention = pruning_config.proportional_attention
        self.gradient_checkpointing = False

    def forward(self, state: TokenState, implementation: str = "sdpa") -> TokenState:
        return run_encoder(self.layers, self.reducer, state, implementation=implementation,
                           proportional=self.proportional_attention)


class PrunedBlipTextEncoder(nn.Module):
    """Replaces `BlipTextEncoder`; same parameter names (`layer.i`), plus `reducer` when the text side reduces."""

    def __init__(self, config, pruning_config):
        super().__init__()
        self.config = config
        self.layer = nn.ModuleList([PrunedBlipTextLayer(config, i) for i in range(config.num_hidden_layers)])
        self.reducer = build_reducer(pruning_config, "text", config.hidden_size, config.num_hidden_layers)
        self.proportional_attention = pruning_config.proportional_attention
        self.gradient_checkpointing = False

    def forward(self, state: TokenState, encoder_hidden_states=None, encoder_bias: torch.Tensor | None = None,
                implementation: str = "sdpa") -> TokenState:
        return run_encoder(self.layer, self.reducer, state, encoder_hidden_states=encoder_hidden_states,
                           encoder_bias=encoder_bias, implementation=implementation,
                           proportional=self.proportional_attention)
