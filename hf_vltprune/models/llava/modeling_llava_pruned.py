"""Pruning-enabled LLaVA: subclasses of the transformers LLaVA classes that send fewer visual tokens through the
language model.

`LlavaPrunedModel` overrides `get_image_features` (the vision tower, run only as deep as it is read, with an
in-tower reducer or a selection of visual tokens after it) and `forward` (placing the fewer image tokens into the
prompt, and dropping tokens between language-model layers). Generation, the KV cache, the Trainer and peft all stay
the stock code paths: a prefill stores on the cache what was removed, and decoding steps read it back.
"""

# No `from __future__ import annotations`: transformers reads the `config` annotation as the config class.

from dataclasses import dataclass, fields

import torch
from transformers import LlavaForConditionalGeneration, LlavaModel
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.llava.modeling_llava import LlavaCausalLMOutputWithPast, LlavaModelOutputWithPast

from ...config import PruningConfig
from ...reduce import TokenReducer, get_reducer_class
from ..pruned_model import PrunedModelMixin
from .configuration_llava_pruned import LlavaPrunedConfig
from .language_model_drop import DropPass, LanguageModelDropper
from .sequence import IGNORE_INDEX, KeptTokens, first_supervised, reduce_prompt
from .vision_tower import cls_attention_and_keys, run_vision_tower

# Name of the attribute a KV cache carries after a prefill that removed tokens.
CACHE_ATTRIBUTE = "hf_vltprune"
# transformers 5.24 renamed the KV cache argument and output field `past_key_values` to `cache`, and the outputs'
# `image_hidden_states` to `image_outputs` (the old names stay as deprecated aliases): use the installed names.
_OUTPUT_FIELDS = {field.name for field in fields(LlavaModelOutputWithPast)}
CACHE_FIELD = "cache" if "cache" in _OUTPUT_FIELDS else "past_key_values"
IMAGE_FIELD = "image_outputs" if "image_outputs" in _OUTPUT_FIELDS else "image_hidden_states"


def take_cache(past_key_values, kwargs: dict):
    """The KV cache, whether the caller passed it as `past_key_values` or (transformers >= 5.24) as `cache`."""
    cache = kwargs.pop("cache", None)
    return past_key_values if past_key_values is not None else cache


def image_output(image) -> dict:
    """The outputs' image field for the installed transformers: the projected features, or the features output."""
    if image is None:
        return {}
    return {IMAGE_FIELD: image if IMAGE_FIELD == "image_outputs" else torch.cat(image.pooler_output)}


@dataclass
class LlavaPrunedImageFeatures(BaseModelOutputWithPooling):
    """`get_image_features` output: `pooler_output` is the per-image list of projected tokens the prompt receives.

    anchors (`list[torch.Tensor]`, *optional*):
        Per image, the patch each token sits at (its position with `token_positions="original"`); `None` when every
        patch is there.
    patch_features, patch_keys, dominance (`torch.Tensor`, *optional*):
        For a selection that still needs the prompt (`textguided`): the `[images, N, C]` vision features, their keys,
        and the [CLS] attention over them; `pooler_output` then holds every patch, projected.
    """

    anchors: list[torch.Tensor] | None = None
    patch_features: torch.Tensor | None = None
    patch_keys: torch.Tensor | None = None
    dominance: torch.Tensor | None = None

    def select_images(self, order: list[int]) -> "LlavaPrunedImageFeatures":
        """These features for the images `order` lists (repeats allowed), in that order."""
        index = torch.tensor(order, dtype=torch.long, device=self.last_hidden_state.device)

        def pick(value):
            if value is None:
                return None
            return [value[i] for i in order] if isinstance(value, list) else value.index_select(0, index)

        return LlavaPrunedImageFeatures(last_hidden_state=pick(self.last_hidden_state),
                                        pooler_output=pick(self.pooler_output), anchors=pick(self.anchors),
                                        patch_features=pick(self.patch_features), patch_keys=pick(self.patch_keys),
                                        dominance=pick(self.dominance))


@dataclass
class LlavaPrunedModelOutput(LlavaModelOutputWithPast):
    """`kept_tokens`: which input positions the outputs stand for (`None` when no token was removed)."""

    kept_tokens: KeptTokens | None = None


@dataclass
class LlavaPrunedCausalLMOutput(LlavaCausalLMOutputWithPast):
    """`kept_tokens`: which input positions the logits stand for (`None` when no token was removed)."""

    kept_tokens: KeptTokens | None = None


@dataclass
class PromptState:
    """What a prefill that removed tokens leaves on the KV cache for the decoding steps."""

    prompt_length: int
    key_mask: torch.Tensor
    position_offset: torch.Tensor
    dropped: DropPass | None = None


def build_llava_reducer(config: LlavaPrunedConfig, pruning: PruningConfig) -> TokenReducer | None:
    if not pruning.reduces("vision"):
        return None
    reducer_class = get_reducer_class(pruning.method)
    if reducer_class.location == "language_model":
        text = config.text_config
        return reducer_class(pruning.keep_schedule("vision", text.num_hidden_layers), text.hidden_size,
                             text.num_hidden_layers, pruning.method_options, num_heads=text.num_attention_heads)
    vision = config.vision_config
    layers = config.vision_layers_run if reducer_class.location == "encoder" else 1
    return reducer_class(pruning.keep_schedule("vision", layers), vision.hidden_size, vision.num_hidden_layers,
                         pruning.method_options, num_heads=vision.num_attention_heads)


class LlavaPrunedModel(PrunedModelMixin, LlavaModel):
    """[`~transformers.LlavaModel`] whose language model reads fewer visual tokens."""

    config: LlavaPrunedConfig

    def __init__(self, config: LlavaPrunedConfig):
        super().__init__(config)
        self.pruning = config.pruning_config  # parsed and validated once, not in every forward
        self.reducer = build_llava_reducer(config, self.pruning)
        self.dropper = None
        if self.reducer is not None and self.reducer.location == "language_model":
            self.dropper = LanguageModelDropper(self.language_model.layers, self.reducer, self.language_model.config)
        self.post_init()

    def _active_reducer(self, location: str) -> TokenReducer | None:
        reducer = self.reducer
        return reducer if reducer is not None and reducer.enabled and reducer.location == location else None

    def get_image_features(self, pixel_values, vision_feature_layer=None, vision_feature_select_strategy=None,
                           image_sizes=None, **kwargs):
        encoder_reducer = self._active_reducer("encoder")
        selector = self._active_reducer("before_language_model")
        if encoder_reducer is None and selector is None:
            return super().get_image_features(pixel_values=pixel_values, vision_feature_layer=vision_feature_layer,
                                              vision_feature_select_strategy=vision_feature_select_strategy,
                                              image_sizes=image_sizes, **kwargs)
        if image_sizes is not None:
            raise ValueError("Pruned LLaVA takes images of the vision tower's size only (image_sizes=None).")
        layer = self.config.vision_feature_layer if vision_feature_layer is None else vision_feature_layer
        strategy = vision_feature_select_strategy or self.config.vision_feature_select_strategy
        depth = self.config.vision_config.num_hidden_layers
        layers = [index % (depth + 1) for index in (layer if isinstance(layer, list) else [layer])]
        states = run_vision_tower(self.vision_tower, pixel_values, max(layers), encoder_reducer,
                                  self.pruning.proportional_attention)
        first = 1 if strategy == "default" else 0
        features = torch.cat([states[index][:, first:] for index in layers], dim=-1)
        if selector is None:
            return LlavaPrunedImageFeatures(last_hidden_state=states[-1],
                                            pooler_output=list(self.multi_modal_projector(features)))

        # The [CLS] attention of the deepest read layer ranks the patches; its keys say which are alike.
        dominance, keys = cls_attention_and_keys(self.vision_tower.encoder.layers[max(layers) - 1], states[-2])
        if first == 0:  # "full": [CLS] is a token too, and always among the dominant ones
            dominance = torch.cat([torch.ones_like(dominance[:, :1]), dominance], dim=1)
            keys = torch.cat([keys[:, :1], keys], dim=1)
        if selector.method_name == "visionzip":
            tokens, anchors = selector.select(features, keys, dominance)
            return LlavaPrunedImageFeatures(last_hidden_state=states[-1], anchors=list(anchors),
                                            pooler_output=list(self.multi_modal_projector(tokens)))
        return LlavaPrunedImageFeatures(last_hidden_state=states[-1],
                                        pooler_output=list(self.multi_modal_projector(features)),
                                        patch_features=features, patch_keys=keys, dominance=dominance)

    def forward(self, input_ids=None, pixel_values=None, attention_mask=None, position_ids=None,
                past_key_values=None, inputs_embeds=None, vision_feature_layer=None,
                vision_feature_select_strategy=None, image_sizes=None, mm_encoder_outputs=None,
                prompt_length=None, **kwargs) -> LlavaPrunedModelOutput:
        r"""As [`~transformers.LlavaModel.forward`], reducing the visual tokens in the prefill.

        prompt_length (`int` or `torch.Tensor` of shape `(batch_size,)`, *optional*):
            Where the prompt ends: reducers guided by the prompt read only the tokens before it (so a training
            example's answer never chooses the tokens it is predicted from). `generate()` sets it; defaults to the
            whole input.
        """
        past_key_values = take_cache(past_key_values, kwargs)
        if self.reducer is None or not self.reducer.enabled:
            return LlavaPrunedModelOutput(**super().forward(
                input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask,
                position_ids=position_ids, **{CACHE_FIELD: past_key_values}, inputs_embeds=inputs_embeds,
                vision_feature_layer=vision_feature_layer,
                vision_feature_select_strategy=vision_feature_select_strategy, image_sizes=image_sizes,
                mm_encoder_outputs=mm_encoder_outputs, **kwargs))
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if pixel_values is not None and mm_encoder_outputs:
            raise ValueError("You cannot specify both pixel_values and mm_encoder_outputs at the same time")
        state = getattr(past_key_values, CACHE_ATTRIBUTE, None)
        if past_key_values is not None and past_key_values.get_seq_length() > 0:
            return self._decode(input_ids, inputs_embeds, attention_mask, position_ids, past_key_values, state,
                                **kwargs)

        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        is_image = self._image_placeholders(input_ids, inputs_embeds)
        image = (mm_encoder_outputs or {}).get("image")
        if image is None and pixel_values is not None:
            image = self.get_image_features(pixel_values, vision_feature_layer, vision_feature_select_strategy,
                                            image_sizes=image_sizes, return_dict=True)
        batch, length = is_image.shape
        end = torch.full((batch,), length, device=is_image.device) if prompt_length is None else \
            torch.as_tensor(prompt_length, device=is_image.device).expand(batch)
        # Only the prompt holds images: a generated token that happens to be the image token is text.
        is_image &= torch.arange(length, device=is_image.device) < end[:, None]
        key_mask = attention_mask.bool() if attention_mask is not None else torch.ones_like(is_image)
        if image is not None and getattr(image, "patch_features", None) is not None:
            image = self._select_by_prompt(image, inputs_embeds, is_image, key_mask, end)

        prompt = None
        if image is not None:
            prompt = reduce_prompt(inputs_embeds, is_image, image.pooler_output, getattr(image, "anchors", None),
                                   self.config.tokens_per_image, attention_mask, position_ids,
                                   self.pruning.token_positions)
            inputs_embeds, attention_mask, position_ids = prompt.inputs_embeds, prompt.attention_mask, \
                prompt.position_ids
            is_image, key_mask, end = prompt.kept.gather(is_image, fill=False), attention_mask.bool(), \
                (prompt.kept.index < end[:, None]).sum(dim=1)
        elif attention_mask is None:
            attention_mask = key_mask.long()

        dropped = None
        if self.dropper is not None and bool(is_image.any()):
            real = key_mask & (torch.arange(key_mask.shape[1], device=key_mask.device) < end[:, None])
            guide = torch.where(real, torch.arange(key_mask.shape[1], device=key_mask.device), -1).amax(dim=1)
            dropped = DropPass(key_mask, key_mask.shape[1], visual=is_image & key_mask, guide=guide,
                               num_visual=(is_image & key_mask).sum(dim=1))
        outputs = self._run_language_model(inputs_embeds, attention_mask, position_ids, past_key_values, dropped,
                                           **kwargs)
        if dropped is not None:
            dropped.visual = dropped.guide = None  # decoding steps read only the stages
        kept = prompt.kept if prompt is not None else None
        if dropped is not None and dropped.current is not None:
            kept = kept.then(dropped.current) if kept is not None else dropped.current
        cache = getattr(outputs, CACHE_FIELD)
        if cache is not None and (prompt is not None or dropped is not None):
            offset = prompt.position_offset if prompt is not None else torch.zeros(batch, dtype=torch.long,
                                                                                   device=key_mask.device)
            setattr(cache, CACHE_ATTRIBUTE, PromptState(length, attention_mask, offset, dropped))
        return LlavaPrunedModelOutput(
            last_hidden_state=outputs.last_hidden_state, **{CACHE_FIELD: cache}, hidden_states=outputs.hidden_states,
            attentions=outputs.attentions, **image_output(image), kept_tokens=kept)

    def _decode(self, input_ids, inputs_embeds, attention_mask, position_ids, past_key_values, state, **kwargs):
        """A decoding step after a prefill that removed tokens: the mask and positions of the cached prompt."""
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        dropped = None
        if state is not None:
            if attention_mask is not None:
                attention_mask = torch.cat([state.key_mask, attention_mask[:, state.prompt_length:]], dim=1)
            if position_ids is not None:
                position_ids = position_ids - state.position_offset[:, None]
            if state.dropped is not None:
                key_mask = attention_mask if attention_mask is not None else torch.ones(
                    inputs_embeds.shape[0], past_key_values.get_seq_length() + inputs_embeds.shape[1],
                    dtype=torch.long, device=inputs_embeds.device)
                dropped = DropPass(key_mask.bool(), state.dropped.prefill_length, stages=state.dropped.stages)
        outputs = self._run_language_model(inputs_embeds, attention_mask, position_ids, past_key_values, dropped,
                                           **kwargs)
        return LlavaPrunedModelOutput(last_hidden_state=outputs.last_hidden_state,
                                      **{CACHE_FIELD: getattr(outputs, CACHE_FIELD)},
                                      hidden_states=outputs.hidden_states, attentions=outputs.attentions)

    def _run_language_model(self, inputs_embeds, attention_mask, position_ids, past_key_values, dropped, **kwargs):
        run = dict(attention_mask=attention_mask, position_ids=position_ids, **{CACHE_FIELD: past_key_values},
                   inputs_embeds=inputs_embeds, **kwargs)
        if dropped is None:
            return self.language_model(**run)
        with self.dropper.active(dropped):
            return self.language_model(**run)

    def _image_placeholders(self, input_ids, inputs_embeds) -> torch.Tensor:
        if input_ids is not None:
            return input_ids == self.config.image_token_id
        image_embedding = self.get_input_embeddings()(
            torch.tensor(self.config.image_token_id, device=inputs_embeds.device))
        return (inputs_embeds == image_embedding).all(-1)

    def _select_by_prompt(self, image: LlavaPrunedImageFeatures, inputs_embeds, is_image, key_mask, end):
        """`textguided`: rank each image's patches by its prompt's attention too, then keep the best."""
        counts = is_image.sum(dim=1) // self.config.tokens_per_image
        owner = torch.repeat_interleave(torch.arange(len(counts), device=counts.device), counts)
        text = ~is_image & key_mask & (torch.arange(is_image.shape[1], device=end.device) < end[:, None])
        projected = torch.stack(image.pooler_output)
        relevance = prompt_attention(self.language_model.layers[0], inputs_embeds[owner], text[owner],
                                     projected.to(inputs_embeds.dtype))
        tokens, anchors = self.reducer.select(image.patch_features, image.patch_keys, image.dominance, relevance)
        return LlavaPrunedImageFeatures(last_hidden_state=image.last_hidden_state, anchors=list(anchors),
                                        pooler_output=list(self.multi_modal_projector(tokens)))


def prompt_attention(layer, text_embeds: torch.Tensor, text_mask: torch.Tensor,
                     visual_embeds: torch.Tensor) -> torch.Tensor:
    """`[images, N]` attention the prompt's text tokens pay each image's visual tokens in the language model's first
    layer (content only, no rotary positions), averaged over heads and text tokens.

    Args:
        text_embeds: `[images, L, D]` the prompt embeddings of each image's sample; `text_mask` `[images, L]` marks
            its text tokens (before the end of the prompt).
        visual_embeds: `[images, N, D]` each image's projected patches.
    """
    attention, head_dim = layer.self_attn, layer.self_attn.head_dim
    images, length, _ = text_embeds.shape
    queries = attention.q_proj(layer.input_layernorm(text_embeds)).view(images, length, -1, head_dim).transpose(1, 2)
    keys = attention.k_proj(layer.input_layernorm(visual_embeds)).view(images, visual_embeds.shape[1], -1, head_dim)
    keys = keys.transpose(1, 2).repeat_interleave(queries.shape[1] // keys.shape[2], dim=1)
    weights = (queries @ keys.transpose(-1, -2)).float().mul(head_dim ** -0.5).softmax(dim=-1)  # [I, H, L, N]
    weights = weights.mean(dim=1) * text_mask[..., None]
    return weights.sum(dim=1) / text_mask.sum(dim=1, keepdim=True).clamp(min=1)


class LlavaPrunedForConditionalGeneration(PrunedModelMixin, LlavaForConditionalGeneration):
    """[`~transformers.LlavaForConditionalGeneration`] whose language model reads fewer visual tokens.

    The logits (and `labels`) cover the tokens the language model read: with visual tokens removed the output is
    shorter than `input_ids`; `outputs.kept_tokens` says which input positions it holds.
    """

    config: LlavaPrunedConfig

    def __init__(self, config: LlavaPrunedConfig):
        super().__init__(config)
        self.model = LlavaPrunedModel(config)
        self.post_init()

    def forward(self, input_ids=None, pixel_values=None, attention_mask=None, position_ids=None,
                past_key_values=None, inputs_embeds=None, vision_feature_layer=None,
                vision_feature_select_strategy=None, labels=None, logits_to_keep=0, image_sizes=None,
                mm_encoder_outputs=None, prompt_length=None, **kwargs):
        if labels is not None and prompt_length is None:
            prompt_length = first_supervised(labels)
        outputs = self.model(
            input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask, position_ids=position_ids,
            past_key_values=past_key_values, inputs_embeds=inputs_embeds, vision_feature_layer=vision_feature_layer,
            vision_feature_select_strategy=vision_feature_select_strategy, image_sizes=image_sizes,
            mm_encoder_outputs=mm_encoder_outputs, prompt_length=prompt_length, **kwargs)
        hidden_states = outputs.last_hidden_state
        if isinstance(logits_to_keep, int):
            hidden_states = hidden_states[:, -logits_to_keep:] if logits_to_keep else hidden_states
        else:
            hidden_states = hidden_states[:, logits_to_keep]
        logits = self.lm_head(hidden_states)
        loss = None
        if labels is not None:
            if outputs.kept_tokens is not None:
                labels = outputs.kept_tokens.gather(labels, fill=IGNORE_INDEX)
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size,
                                      **kwargs)
        return LlavaPrunedCausalLMOutput(loss=loss, logits=logits, **{CACHE_FIELD: getattr(outputs, CACHE_FIELD)},
                                         hidden_states=outputs.hidden_states, attentions=outputs.attentions,
                                         **{IMAGE_FIELD: getattr(outputs, IMAGE_FIELD)},
                                         kept_tokens=outputs.kept_tokens)

    def _expand_multimodal_outputs(self, input_ids, mm_encoder_output, expand_size=1, inputs_embeds=None):
        """Beams / several sequences per prompt: repeat each prompt's images (transformers >= 5.2x pre-encodes images
        and matches them to prompts by token counts, which reduced images no longer have)."""
        image = mm_encoder_output.get("image")
        if not isinstance(image, LlavaPrunedImageFeatures):
            return super()._expand_multimodal_outputs(input_ids, mm_encoder_output, expand_size=expand_size,
                                                      inputs_embeds=inputs_embeds)
        placeholders = self.model._image_placeholders(input_ids if input_ids is not None and input_ids.numel() else
                                                      None, inputs_embeds)
        counts = (placeholders.sum(dim=1) // self.config.tokens_per_image).tolist()
        starts = [sum(counts[:i]) for i in range(len(counts))]
        order = [start + j for start, count in zip(starts, counts) for _ in range(expand_size) for j in range(count)]
        return {**mm_encoder_output, "image": image.select_images(order)}

    def generate(self, inputs=None, **kwargs):
        """As the stock `generate()`; the visual tokens are reduced once, in the prefill, guided by the prompt only.

        The returned sequences start with the whole prompt (as given), then the new tokens.
        """
        input_ids = inputs if inputs is not None else kwargs.get("input_ids")
        if input_ids is not None and self.model.reducer is not None:
            kwargs.setdefault("prompt_length", input_ids.shape[1])
        return super().generate(inputs, **kwargs)


LLAVA_PRUNED_CLASSES = {
    LlavaModel: LlavaPrunedModel,
    LlavaForConditionalGeneration: LlavaPrunedForConditionalGeneration,
}
