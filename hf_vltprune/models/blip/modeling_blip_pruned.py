"""Pruning-enabled BLIP: subclasses of the transformers BLIP classes whose encoders reduce tokens.

Only the encoders are replaced (same parameter names); the heads' forwards are overridden where they build the
all-ones image mask, so that the text side sees each reduced image token's padding mask and size bias. The text
decoders (captioning, VQA answers) stay the stock eager modules.
"""



import copy
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.functional import normalize
from transformers import (
    BlipForConditionalGeneration,
    BlipForImageTextRetrieval,
    BlipForQuestionAnswering,
    BlipModel,
)
from transformers.modeling_outputs import BaseModelOutputWithPoolingAndCrossAttentions
from transformers.models.blip.modeling_blip import (
    BlipForConditionalGenerationModelOutput,
    BlipImageTextMatchingModelOutput,
    BlipPreTrainedModel,
    BlipTextVisionModelOutput,
    BlipVisionEmbeddings,
    BlipVisionModel,
)
from transformers.models.blip.modeling_blip_text import (
    BlipTextEmbeddings,
    BlipTextModel,
    BlipTextPooler,
    BlipTextPreTrainedModel,
)
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from ...config import PruningConfig
from ...reduce import TokenState, attention_bias
from ..pruned_model import PrunedInitMixin, PrunedModelMixin
from .configuration_blip_pruned import BlipPrunedConfig
from .layers_blip_pruned import PrunedBlipTextEncoder, PrunedBlipVisionEncoder


@dataclass
class BlipPrunedEncoderOutput(BaseModelOutputWithPoolingAndCrossAttentions):
    """Encoder output plus the reduced tokens' bookkeeping.

    token_size (`torch.Tensor` of shape `(batch_size, num_tokens)`, *optional*):
        Original tokens each output token stands for; `None` when nothing was merged.
    token_mask (`torch.Tensor` of shape `(batch_size, num_tokens)`, *optional*):
        `True` for real tokens; `None` when every output token is real.
    """

    token_size: torch.Tensor | None = None
    token_mask: torch.Tensor | None = None

    def attention_bias(self, dtype: torch.dtype, proportional: bool = True) -> torch.Tensor | None:
        """The `[B, 1, 1, N]` additive mask a consumer of these tokens must use (`None` if all zeros)."""
        return attention_bias(self.token_size if proportional else None, self.token_mask, dtype)


class BlipPrunedVisionModel(PrunedInitMixin, BlipVisionModel):
    """BLIP's ViT with a token reducer between self-attention and MLP of its reducing layers."""

    _supports_sdpa = True

    def __init__(self, config, pruning_config: PruningConfig):
        BlipPreTrainedModel.__init__(self, config)
        self.embeddings = BlipVisionEmbeddings(config)
        self.encoder = PrunedBlipVisionEncoder(config, pruning_config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    @merge_with_config_defaults
    @capture_outputs(tie_last_hidden_states=False)
    def forward(self, pixel_values=None, interpolate_pos_encoding: bool = False, **kwargs) -> BlipPrunedEncoderOutput:
        if pixel_values is None:
            raise ValueError("You have to specify pixel_values")
        embeddings = self.embeddings(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)
        state = self.encoder(TokenState(embeddings), implementation=self.config._attn_implementation)
        last_hidden_state = self.post_layernorm(state.hidden)
        # Stock BLIP applies post_layernorm a second time to the CLS token; kept for identical outputs.
        pooled_output = self.post_layernorm(last_hidden_state[:, 0, :])
        return BlipPrunedEncoderOutput(
            last_hidden_state=last_hidden_state,
            pooler_output=pooled_output,
            token_size=state.size,
            token_mask=state.mask,
        )


def _as_key_bias(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """A 2-D 0/1 key mask becomes an additive `[B, 1, 1, N]` bias; a 4-D additive bias passes through."""
    if mask is None or mask.dim() == 4:
        return mask
    mask = mask.bool()
    return None if bool(mask.all()) else attention_bias(None, mask, dtype)


class BlipPrunedTextModel(PrunedInitMixin, BlipTextModel):
    """BLIP's text encoder (bidirectional, optionally cross-attending to image tokens) with a token reducer.

    `encoder_attention_mask` accepts the stock 2-D 0/1 mask or a 4-D additive bias such as
    `BlipPrunedEncoderOutput.attention_bias(...)` of the reduced image tokens.
    """

    _supports_sdpa = True

    def __init__(self, config, pruning_config: PruningConfig, add_pooling_layer: bool = True):
        BlipTextPreTrainedModel.__init__(self, config)
        self.embeddings = BlipTextEmbeddings(config)
        self.encoder = PrunedBlipTextEncoder(config, pruning_config)
        self.pooler = BlipTextPooler(config) if add_pooling_layer else None
        self.post_init()

    @merge_with_config_defaults
    @capture_outputs
    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        inputs_embeds=None,
        encoder_embeds=None,
        encoder_hidden_states=None,
        encoder_attention_mask=None,
        is_decoder: bool | None = False,
        **kwargs,
    ) -> BlipPrunedEncoderOutput:
        if is_decoder:
            raise ValueError(
                "BlipPrunedTextModel is a bidirectional encoder: is_decoder=True is not supported (BLIP's text "
                "decoders stay the stock modules)."
            )
        if encoder_embeds is None:
            embeddings = self.embeddings(input_ids=input_ids, position_ids=position_ids, inputs_embeds=inputs_embeds)
        else:
            embeddings = encoder_embeds
        padding = attention_mask.bool() if attention_mask is not None and not bool(attention_mask.all()) else None
        state = self.encoder(
            TokenState(embeddings, mask=padding),
            encoder_hidden_states=encoder_hidden_states,
            encoder_bias=_as_key_bias(encoder_attention_mask, embeddings.dtype),
            implementation=self.config._attn_implementation,
        )
        sequence_output = state.hidden
        pooled_output = self.pooler(sequence_output) if self.pooler is not None else None
        return BlipPrunedEncoderOutput(
            last_hidden_state=sequence_output,
            pooler_output=pooled_output,
            token_size=state.size,
            token_mask=state.mask,
        )


def _pruned_encoder_configs(config: BlipPrunedConfig):
    """Sub-configs for our encoders, carrying the requested attention implementation.

    Our encoder layers support SDPA, the stock BLIP modules (text decoders) are eager-only and build eager masks from
    the shared `text_config`. So our encoders get their own copies of the sub-configs, and the shared ones stay eager.
    """
    requested = config._attn_implementation
    vision, text = copy.deepcopy(config.vision_config), copy.deepcopy(config.text_config)
    vision._attn_implementation_internal = requested
    text._attn_implementation_internal = requested
    config.vision_config._attn_implementation_internal = "eager"
    config.text_config._attn_implementation_internal = "eager"
    return vision, text


class _BlipPrunedMixin(PrunedModelMixin):
    """What every pruning-enabled BLIP head shares: the image tokens' attention bias."""

    def _image_bias(self, vision_outputs: BlipPrunedEncoderOutput, dtype: torch.dtype) -> torch.Tensor | None:
        return vision_outputs.attention_bias(dtype, self.pruning_config.proportional_attention)


class _ImageGroundedTextMixin(_BlipPrunedMixin):
    """Heads whose text encoder cross-attends to the image: retrieval (ITM) and question answering."""

    def __init__(self, config: BlipPrunedConfig):
        vision_config, text_config = _pruned_encoder_configs(config)
        super().__init__(config)
        self.vision_model = BlipPrunedVisionModel(vision_config, config.pruning_config)
        self.text_encoder = BlipPrunedTextModel(text_config, config.pruning_config, add_pooling_layer=False)
        _share_reducer_parts(self.vision_model, self.text_encoder)
        self.post_init()

    def _encode_image_and_text(self, input_ids, attention_mask, pixel_values, interpolate_pos_encoding, **kwargs):
        """The vision encoder, then the text encoder cross-attending to the (reduced) image tokens with their bias."""
        vision_outputs = self.vision_model(pixel_values=pixel_values, interpolate_pos_encoding=interpolate_pos_encoding,
                                           **kwargs)
        image_embeds = vision_outputs.last_hidden_state
        text_outputs = self.text_encoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=self._image_bias(vision_outputs, image_embeds.dtype),
            **kwargs,
        )
        return vision_outputs, text_outputs


def _share_reducer_parts(vision_model: BlipPrunedVisionModel, text_model: BlipPrunedTextModel) -> None:
    """When both encoders reduce, the text reducer may use the vision reducer's parts (MADTP's prototypes)."""
    vision, text = vision_model.encoder.reducer, text_model.encoder.reducer
    if vision is not None and text is not None:
        text.share_with(vision)


class BlipPrunedModel(_BlipPrunedMixin, BlipModel):
    """[`~transformers.BlipModel`] (contrastive image/text features) with pruning-enabled encoders."""

    config: BlipPrunedConfig

    def __init__(self, config: BlipPrunedConfig):
        vision_config, text_config = _pruned_encoder_configs(config)
        super().__init__(config)
        self.text_model = BlipPrunedTextModel(text_config, config.pruning_config)
        self.vision_model = BlipPrunedVisionModel(vision_config, config.pruning_config)
        _share_reducer_parts(self.vision_model, self.text_model)
        self.post_init()


class BlipPrunedForImageTextRetrieval(_ImageGroundedTextMixin, BlipForImageTextRetrieval):
    """[`~transformers.BlipForImageTextRetrieval`] (ITM and ITC scores) with pruning-enabled encoders."""

    config: BlipPrunedConfig

    def forward(self, input_ids, pixel_values, use_itm_head=True, attention_mask=None,
                interpolate_pos_encoding=False, **kwargs) -> BlipImageTextMatchingModelOutput:
        if use_itm_head:
            vision_outputs, text_outputs = self._encode_image_and_text(
                input_ids, attention_mask, pixel_values, interpolate_pos_encoding, **kwargs
            )
            question_embeds = text_outputs.last_hidden_state
            output = self.itm_head(question_embeds[:, 0, :])
        else:
            vision_outputs = self.vision_model(pixel_values=pixel_values,
                                               interpolate_pos_encoding=interpolate_pos_encoding, **kwargs)
            question_embeds = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask,
                                                **kwargs).last_hidden_state
            image_feat = normalize(self.vision_proj(vision_outputs.last_hidden_state[:, 0, :]), dim=-1)
            text_feat = normalize(self.text_proj(question_embeds[:, 0, :]), dim=-1)
            output = image_feat @ text_feat.t()
        return BlipImageTextMatchingModelOutput(
            itm_score=output,
            last_hidden_state=vision_outputs.last_hidden_state,
            hidden_states=vision_outputs.hidden_states,
            attentions=vision_outputs.attentions,
            question_embeds=question_embeds,
        )


class BlipPrunedForConditionalGeneration(_BlipPrunedMixin, BlipForConditionalGeneration):
    """[`~transformers.BlipForConditionalGeneration`] (captioning) with a pruning-enabled vision encoder."""

    config: BlipPrunedConfig

    def __init__(self, config: BlipPrunedConfig):
        vision_config, _ = _pruned_encoder_configs(config)
        super().__init__(config)
        self.vision_model = BlipPrunedVisionModel(vision_config, config.pruning_config)
        self.post_init()

    def forward(self, pixel_values, input_ids=None, attention_mask=None, labels=None, interpolate_pos_encoding=False,
                logits_to_keep=0, **kwargs) -> BlipForConditionalGenerationModelOutput:
        vision_outputs = self.vision_model(pixel_values=pixel_values, interpolate_pos_encoding=interpolate_pos_encoding,
                                           **kwargs)
        image_embeds = vision_outputs.last_hidden_state
        if logits_to_keep:  # transformers < 5.23 has no logits_to_keep on the BLIP text decoder
            kwargs["logits_to_keep"] = logits_to_keep
        outputs = self.text_decoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=self._image_bias(vision_outputs, image_embeds.dtype),
            labels=labels,
            reduction="mean",
            **kwargs,
        )
        return BlipForConditionalGenerationModelOutput(
            loss=outputs.loss,
            logits=outputs.logits,
            image_embeds=image_embeds,
            last_hidden_state=vision_outputs.last_hidden_state,
            hidden_states=vision_outputs.hidden_states,
            attentions=vision_outputs.attentions,
        )

    @torch.no_grad()
    def generate(self, pixel_values, input_ids=None, attention_mask=None, interpolate_pos_encoding=False,
                 **generate_kwargs) -> torch.LongTensor:
        vision_outputs = self.vision_model(pixel_values=pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)
        image_embeds = vision_outputs.last_hidden_state
        batch_size = pixel_values.shape[0]
        if isinstance(input_ids, list):
            input_ids = torch.LongTensor(input_ids)
        elif input_ids is None:
            start = [self.decoder_input_ids, self.config.text_config.eos_token_id]
            input_ids = torch.LongTensor([start]).repeat(batch_size, 1).to(image_embeds.device)
        input_ids[:, 0] = self.config.text_config.bos_token_id
        attention_mask = attention_mask[:, :-1] if attention_mask is not None else None
        return self.text_decoder.generate(
            input_ids=input_ids[:, :-1],
            eos_token_id=self.config.text_config.sep_token_id,
            pad_token_id=self.config.text_config.pad_token_id,
            attention_mask=attention_mask,
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=_generation_mask(self._image_bias(vision_outputs, image_embeds.dtype), image_embeds),
            **generate_kwargs,
        )


def _generation_mask(bias: torch.Tensor | None, tokens: torch.Tensor) -> torch.Tensor:
    """`generate()` needs a tensor it can expand per beam: the 4-D bias, or the stock all-ones 2-D mask."""
    if bias is not None:
        return bias
    return torch.ones(tokens.shape[:2], dtype=torch.long, device=tokens.device)


class BlipPrunedForQuestionAnswering(_ImageGroundedTextMixin, BlipForQuestionAnswering):
    """[`~transformers.BlipForQuestionAnswering`] with pruning-enabled vision and question encoders."""

    config: BlipPrunedConfig

    def _encode_question(self, input_ids, pixel_values, attention_mask, interpolate_pos_encoding, **kwargs):
        vision_outputs, question = self._encode_image_and_text(
            input_ids, attention_mask, pixel_values, interpolate_pos_encoding, **kwargs
        )
        # The answer decoder cross-attends to the (possibly reduced) question tokens.
        if question.token_mask is None and question.token_size is None:
            question_mask = attention_mask
        else:
            dtype = question.last_hidden_state.dtype
            question_mask = question.attention_bias(dtype, self.pruning_config.proportional_attention)
        return vision_outputs, question.last_hidden_state, question_mask

    def forward(self, input_ids, pixel_values, decoder_input_ids=None, decoder_attention_mask=None,
                attention_mask=None, labels=None, interpolate_pos_encoding=False,
                **kwargs) -> BlipTextVisionModelOutput:
        if labels is None and decoder_input_ids is None:
            raise ValueError(
                "Either `decoder_input_ids` or `labels` should be passed when calling `forward` with"
                " `BlipPrunedForQuestionAnswering` (use `generate` for inference)."
            )
        vision_outputs, question_embeds, question_mask = self._encode_question(
            input_ids, pixel_values, attention_mask, interpolate_pos_encoding, **kwargs
        )
        if labels is not None and decoder_input_ids is None:
            decoder_input_ids = labels
        answer_output = self.text_decoder(
            input_ids=decoder_input_ids,
            attention_mask=decoder_attention_mask,
            encoder_hidden_states=question_embeds,
            encoder_attention_mask=question_mask,
            labels=labels,
            reduction="mean",
            **kwargs,
        )
        return BlipTextVisionModelOutput(
            loss=answer_output.loss.mean() if labels is not None else None,
            image_embeds=vision_outputs.last_hidden_state,
            last_hidden_state=vision_outputs.last_hidden_state,
            hidden_states=vision_outputs.hidden_states,
            attentions=vision_outputs.attentions,
        )

    @torch.no_grad()
    def generate(self, input_ids, pixel_values, attention_mask=None, interpolate_pos_encoding=False,
                 **generate_kwargs) -> torch.LongTensor:
        if isinstance(input_ids, list):
            input_ids = torch.LongTensor(input_ids)
        _, question_embeds, question_mask = self._encode_question(
            input_ids, pixel_values, attention_mask, interpolate_pos_encoding
        )
        # Stock BLIP lets the answer decoder attend to every question position, padding included.
        if question_mask is None or question_mask.dim() != 4:
            question_mask = None
        bos_ids = torch.full((question_embeds.size(0), 1), self.decoder_start_token_id, device=question_embeds.device)
        return self.text_decoder.generate(
            input_ids=bos_ids,
            eos_token_id=self.config.text_config.sep_token_id,
            pad_token_id=self.config.text_config.pad_token_id,
            encoder_hidden_states=question_embeds,
            encoder_attention_mask=_generation_mask(question_mask, question_embeds),
            **generate_kwargs,
        )


BLIP_PRUNED_CLASSES = {
    BlipModel: BlipPrunedModel,
    BlipForImageTextRetrieval: BlipPrunedForImageTextRetrieval,
    BlipForQuestionAnswering: BlipPrunedForQuestionAnswering,
    BlipForConditionalGeneration: BlipPrunedForConditionalGeneration,
}
