"""BLIP encoder layers that carry a `TokenState` and call a reducer between self-attention and the next sub-layer.

Each class subclasses the stock transformers class it replaces and keeps its parameter names, so stock checkpoints
load unchanged and transformers' output hooks (which match modules with `isinstance`) still record hidden states.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.blip.modeling_blip import BlipAttention, BlipEncoderLayer
from transformers.models.blip.modeling_blip_text import (
    BlipTextAttention,
    BlipTextLayer,
    BlipTextSelfAttention,
)

from ...attention import attend
from ...reduce import HeadMask, LayerMetric, TokenReducer, TokenState


def head_features(active: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Indices of the `active` heads' (or neuron groups') features in a `[heads * head_dim]` projection."""
    return (active[:, None] * head_dim + torch.arange(head_dim, device=active.device)).reshape(-1)


def sliceable_heads(head_mask: HeadMask | None, *linears: nn.Module) -> HeadMask | None:
    """`head_mask`, with `active` dropped (compute every head) unless the projections are plain `nn.Linear`s whose
    rows can be sliced; adapters such as LoRA wrap them, and slicing their base weights would skip the adapter."""
    if head_mask is None or head_mask.active is None or all(type(linear) is nn.Linear for linear in linears):
        return head_mask
    return HeadMask(head_mask.weight)


def scale_heads(context: torch.Tensor, head_mask: HeadMask | None) -> torch.Tensor:
    """`[B, h, N, d]` context with each sample's skipped heads zeroed (of the computed heads)."""
    if head_mask is None:
        return context
    weight = head_mask.weight if head_mask.active is None else head_mask.weight[:, head_mask.active]
    return context * weight[:, :, None, None].to(context.dtype)


def feed_forward(hidden: torch.Tensor, up: nn.Linear, activation, down: nn.Linear,
                 neurons: HeadMask | None) -> torch.Tensor:
    """`down(activation(up(hidden)))`, with each sample's skipped neuron groups (`neurons`, over groups of
    consecutive intermediate features) contributing nothing; groups no sample runs are not computed."""
    neurons = sliceable_heads(neurons, up, down)
    if neurons is None:
        return down(activation(up(hidden)))
    group_size = up.out_features // neurons.weight.shape[1]
    weight = neurons.weight
    if neurons.active is None:
        inner = activation(up(hidden))
    else:  # only the groups some sample runs: their rows of `up`, their columns of `down`
        features = head_features(neurons.active, group_size)
        inner = activation(F.linear(hidden, up.weight[features], up.bias[features]))
        weight = weight[:, neurons.active]
    inner = inner * weight.repeat_interleave(group_size, dim=1)[:, None, :].to(inner.dtype)
    return down(inner) if neurons.active is None else F.linear(inner, down.weight[:, features], down.bias)


def self_attention_implementation(reducer, layer_idx: int, implementation: str) -> str:
    """Eager where the layer's reducer reads the attention probabilities (which SDPA does not return)."""
    if reducer is not None and reducer.reads_attention and reducer.reduces_at(layer_idx):
        return "eager"
    return implementation


class PrunedBlipAttention(BlipAttention):
    """Vision self-attention over SDPA (or eager) with an additive key bias; also returns queries, keys and values.

    With a `HeadMask`, each sample's skipped heads contribute nothing, and heads no sample runs are not computed.
    """

    def forward(self, hidden_states, attention_bias=None, implementation="sdpa", head_mask=None, **kwargs):
        batch, length, channels = hidden_states.shape
        head_mask = sliceable_heads(head_mask, self.qkv, self.projection)
        if head_mask is None or head_mask.active is None:
            heads, qkv = self.num_heads, self.qkv(hidden_states)
        else:  # only the heads some sample runs: their rows of q, k and v
            heads, features = head_mask.active.numel(), head_features(head_mask.active, self.head_dim)
            rows = torch.cat([features, features + channels, features + 2 * channels])
            qkv = F.linear(hidden_states, self.qkv.weight[rows], self.qkv.bias[rows])
        query, key, value = qkv.reshape(batch, length, 3, heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        dropout = self.dropout.p if self.training else 0.0
        context, probs = attend(query, key, value, attention_bias, dropout, implementation)
        context = scale_heads(context, head_mask).transpose(1, 2).reshape(batch, length, heads * self.head_dim)
        if head_mask is None or head_mask.active is None:
            output = self.projection(context)
        else:
            output = F.linear(context, self.projection.weight[:, features], self.projection.bias)
        return output, probs, LayerMetric(queries=query, keys=key, values=value, probs=probs)


class PrunedBlipEncoderLayer(BlipEncoderLayer):
    """Pre-LN ViT layer: `x + SelfAttn(LN(x))` -> reduce -> `x + MLP(LN(x))`."""

    def __init__(self, config):
        super().__init__(config)
        self.self_attn = PrunedBlipAttention(config)

    def forward(self, hidden_states, state: TokenState, reducer=None, layer_idx=0, implementation="sdpa",
                proportional=True, **kwargs):
        # `hidden_states` is `state.hidden`; it is passed positionally so transformers' hooks record the tensor.
        bias = state.attention_bias(hidden_states.dtype, proportional)
        heads = reducer.head_mask(layer_idx, state) if reducer is not None else None
        implementation = self_attention_implementation(reducer, layer_idx, implementation)
        attn_out, _, metric = self.self_attn(self.layer_norm1(hidden_states), bias, implementation, head_mask=heads)
        state = state.with_hidden(hidden_states + attn_out)
        if reducer is not None and reducer.reduces_at(layer_idx):
            state = reducer(layer_idx, state, metric)
        neurons = reducer.neuron_mask(layer_idx) if reducer is not None else None
        if neurons is None:
            hidden = state.hidden + self.mlp(self.layer_norm2(state.hidden))
        else:
            mlp = self.mlp
            hidden = state.hidden + feed_forward(self.layer_norm2(state.hidden), mlp.fc1, mlp.activation_fn, mlp.fc2,
                                                 neurons)
        return hidden, state.with_hidden(hidden)


class PrunedBlipTextSelfAttention(BlipTextSelfAttention):
    """BERT-style (cross-)attention over SDPA with an additive key bias; no KV cache (encoders only)."""

    def forward(self, hidden_states, attention_bias=None, encoder_hidden_states=None, implementation="sdpa",
                head_mask=None, **kwargs):
        batch, length, _ = hidden_states.shape
        source = encoder_hidden_states if encoder_hidden_states is not None else hidden_states
        heads, features = self.num_attention_heads, None
        if head_mask is not None and head_mask.active is not None:  # `PrunedBlipTextAttention` checked slicing
            heads, features = head_mask.active.numel(), head_features(head_mask.active, self.attention_head_size)

        def project(linear, x):
            if features is None:
                x = linear(x)
            else:  # only the heads some sample runs
                x = F.linear(x, linear.weight[features], linear.bias[features])
            return x.view(batch, x.shape[1], heads, self.attention_head_size).transpose(1, 2)

        query, key, value = project(self.query, hidden_states), project(self.key, source), project(self.value, source)
        dropout = self.dropout.p if self.training else 0.0
        context, probs = attend(query, key, value, attention_bias, dropout, implementation)
        context = scale_heads(context, head_mask).transpose(1, 2).reshape(batch, length, -1)
        return context, probs, LayerMetric(queries=query, keys=key, values=value, probs=probs)


class PrunedBlipTextAttention(BlipTextAttention):
    def __init__(self, config, is_cross_attention=False, layer_idx=None):
        super().__init__(config, is_cross_attention, layer_idx)
        self.self = PrunedBlipTextSelfAttention(config, is_cross_attention, layer_idx=layer_idx)

    def forward(self, hidden_states, attention_bias=None, encoder_hidden_states=None, implementation="sdpa",
                head_mask=None, **kwargs):
        head_mask = sliceable_heads(head_mask, self.self.query, self.self.key, self.self.value, self.output.dense)
        context, probs, metric = self.self(hidden_states, attention_bias, encoder_hidden_states, implementation,
                                           head_mask=head_mask)
        if head_mask is None or head_mask.active is None:
            return self.output(context, hidden_states), probs, metric
        # The output projection reads only the computed heads' features.
        features = head_features(head_mask.active, self.self.attention_head_size)
        projected = F.linear(context, self.output.dense.weight[:, features], self.output.dense.bias)
        return self.output.LayerNorm(self.output.dropout(projected) + hidden_states), probs, metric


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
        heads = reducer.head_mask(layer_idx, state) if reducer is not None else None
        self_implementation = self_attention_implementation(reducer, layer_idx, implementation)
        attn_out, _, metric = self.attention(hidden_states, bias, implementation=self_implementation, head_mask=heads)
        state = state.with_hidden(attn_out)
        if reducer is not None and reducer.reduces_at(layer_idx):
            state = reducer(layer_idx, state, metric)
        hidden = state.hidden
        if encoder_hidden_states is not None:
            hidden, _, _ = self.crossattention(hidden, encoder_bias, encoder_hidden_states, implementation)
        neurons = reducer.neuron_mask(layer_idx) if reducer is not None else None
        if neurons is None:
            hidden = self.feed_forward_chunk(hidden)
        else:  # BERT's output block around the trimmed feed-forward: dropout, residual, LayerNorm
            inner = feed_forward(hidden, self.intermediate.dense, self.intermediate.intermediate_act_fn,
                                 self.output.dense, neurons)
            hidden = self.output.LayerNorm(self.output.dropout(inner) + hidden)
        return hidden, state.with_hidden(hidden)


def run_encoder(layers: nn.ModuleList, reducer: TokenReducer | None, state: TokenState,
                guidance: torch.Tensor | None = None, **layer_kwargs) -> TokenState:
    """The loop both encoders share: reducer hooks around the layers, one `TokenState` threaded through.
    `guidance` is the other modality's summary for the reducer (`None` when there is none)."""
    if reducer is not None and not reducer.enabled:
        reducer = None
    if reducer is not None:
        state = reducer.start(state, guidance=guidance)
    for layer_idx, layer in enumerate(layers):
        if reducer is not None:
            state = reducer.before_layer(layer_idx, state)
        _, state = layer(state.hidden, state=state, reducer=reducer, layer_idx=layer_idx, **layer_kwargs)
    return reducer.finish(state) if reducer is not None else state


def build_reducer(pruning_config, modality: str, hidden_size: int, num_layers: int, num_heads: int = 1,
                  guidance_size: int = 0, intermediate_size: int | None = None) -> TokenReducer | None:
    """The reducer of one encoder, or `None` when that encoder keeps every token (the stock computation)."""
    from ...reduce import get_reducer_class

    if not pruning_config.reduces(modality):
        return None
    reducer_class = get_reducer_class(pruning_config.method)
    schedule = pruning_config.keep_schedule(modality, num_layers)
    reducer = reducer_class(schedule, hidden_size, num_layers, pruning_config.method_options, num_heads=num_heads,
                            guidance_size=guidance_size)
    groups = reducer.options.get("neuron_groups")
    if reducer.options.get("trim_neurons") and intermediate_size is not None and intermediate_size % groups:
        raise ValueError(f"PruningConfig.method_options['neuron_groups']={groups} is invalid for the {modality} "
                         f"encoder: allowed divisors of its feed-forward width {intermediate_size}.")
    return reducer


class PrunedBlipVisionEncoder(nn.Module):
    """Replaces `BlipEncoder`; same parameter names (`layers.i`), plus `reducer` when the vision side reduces."""

    def __init__(self, config, pruning_config):
        super().__init__()
        self.config = config
        self.layers = nn.ModuleList([PrunedBlipEncoderLayer(config) for _ in range(config.num_hidden_layers)])
        self.reducer = build_reducer(pruning_config, "vision", config.hidden_size, config.num_hidden_layers,
                                     config.num_attention_heads, intermediate_size=config.intermediate_size)
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
        # Text layers cross-attend to image tokens: their summary guides the text reducer.
        self.reducer = build_reducer(pruning_config, "text", config.hidden_size, config.num_hidden_layers,
                                     config.num_attention_heads, config.encoder_hidden_size,
                                     intermediate_size=config.intermediate_size)
        self.proportional_attention = pruning_config.proportional_attention
        self.gradient_checkpointing = False

    def forward(self, state: TokenState, encoder_hidden_states=None, encoder_bias: torch.Tensor | None = None,
                implementation: str = "sdpa") -> TokenState:
        guidance = summarise(encoder_hidden_states, encoder_bias) if encoder_hidden_states is not None else None
        return run_encoder(self.layer, self.reducer, state, guidance, encoder_hidden_states=encoder_hidden_states,
                           encoder_bias=encoder_bias, implementation=implementation,
                           proportional=self.proportional_attention)


def summarise(tokens: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`[B, C]` mean of the real tokens, each weighted by its size, read from their `[B, 1, 1, N]` attention bias
    (`log size`, and the dtype's minimum on padding)."""
    if bias is None:
        return tokens.mean(dim=1)
    bias = bias[:, 0, 0].float()
    weight = torch.where(bias > torch.finfo(bias.dtype).min / 2, bias.exp(), torch.zeros_like(bias))
    return (weight[..., None] * tokens.float()).sum(dim=1).div(weight.sum(dim=1, keepdim=True)).to(tokens.dtype)
