"""Pruning on: reload, Auto classes, padded batches, eager vs SDPA, generation, GFLOPs."""

import pytest
import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageTextToText,
    AutoModelForVisualQuestionAnswering,
    AutoModelForZeroShotImageClassification,
)

import hf_vltprune
from hf_vltprune import (
    AutoPrunedModel,
    BlipPrunedConfig,
    BlipPrunedForConditionalGeneration,
    BlipPrunedForImageTextRetrieval,
    BlipPrunedForQuestionAnswering,
    BlipPrunedModel,
    PruningConfig,
)

from .conftest import make_inputs, tiny_blip_config
from .helpers import assert_same_outputs, head_outputs

PRUNED_HEADS = [BlipPrunedModel, BlipPrunedForImageTextRetrieval, BlipPrunedForQuestionAnswering,
                BlipPrunedForConditionalGeneration]
# Methods whose token budget follows the keep ratio at inference, and every method (MADTP's and SmartTrim's follow
# their learned decisions; the keep ratio is their training target).
BUDGETED_METHODS = ["tome", "crossget"]
METHODS = BUDGETED_METHODS + ["madtp", "smarttrim"]


def pruned(head, method="crossget", vision_keep=0.5, text_keep=0.6, **kwargs):
    # SmartTrim starts keeping everything (its keep logits are offset by +3); without the offset it trims.
    options = {"initial_keep_logit": 0.0} if method == "smarttrim" else {}
    pruning = PruningConfig(method=method, vision_keep=vision_keep, text_keep=text_keep, method_options=options)
    model = head(BlipPrunedConfig(**tiny_blip_config(pruning=pruning), **kwargs)).eval()
    # Non-zero cross embeddings, so that reloading them is actually checked.
    for name, param in model.named_parameters():
        if ".reducer." in name:
            torch.nn.init.normal_(param, std=0.1)
    return model


@pytest.mark.parametrize(
    "head, auto_class",
    [
        (BlipPrunedModel, AutoModel),
        (BlipPrunedModel, AutoModelForZeroShotImageClassification),
        (BlipPrunedForQuestionAnswering, AutoModelForVisualQuestionAnswering),
        (BlipPrunedForConditionalGeneration, AutoModelForImageTextToText),
        (BlipPrunedForImageTextRetrieval, AutoPrunedModel),
        (BlipPrunedForQuestionAnswering, AutoPrunedModel),
    ],
    ids=lambda x: x.__name__,
)
def test_save_and_reload_through_auto_classes_gives_identical_outputs(tmp_path, head, auto_class):
    model = pruned(head)
    inputs = make_inputs()
    expected = head_outputs(model, inputs)
    model.save_pretrained(tmp_path)
    assert AutoConfig.from_pretrained(tmp_path).pruning_config == model.pruning_config
    loaded = auto_class.from_pretrained(tmp_path).eval()
    assert type(loaded) is head
    assert loaded.pruning_config.vision_keep == 0.5
    assert_same_outputs(head_outputs(loaded, inputs), expected, atol=0)


def test_auto_pruned_model_rejects_stock_checkpoints(tmp_path):
    from transformers import BlipConfig, BlipForImageTextRetrieval

    BlipForImageTextRetrieval(BlipConfig(**tiny_blip_config())).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="not an hf_vltprune checkpoint"):
        AutoPrunedModel.from_pretrained(tmp_path)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("head", [BlipPrunedForImageTextRetrieval, BlipPrunedForQuestionAnswering,
                                  BlipPrunedModel], ids=lambda h: h.__name__)
def test_each_sample_alone_matches_the_padded_batch(head, method):
    model = pruned(head, method=method)
    batch = make_inputs(batch=3, length=11)
    together = head_outputs(model, batch)
    for row in range(3):
        length = int(batch["attention_mask"][row].sum())
        alone = {k: v[row:row + 1, :length] if v.dim() == 2 and k != "pixel_values" else v[row:row + 1]
                 for k, v in batch.items()}
        single = head_outputs(model, alone)
        for key, value in together.items():
            if key == "loss":
                continue  # a mean over the batch
            if key == "logits_per_image":
                continue  # compares every image with every text of the batch
            if key == "itc":
                value = value[row:row + 1, row:row + 1]
            elif value.dtype == torch.long:
                value = value[row:row + 1, : single[key].shape[1]]
            else:
                value = value[row:row + 1]
            assert torch.allclose(single[key], value, atol=1e-5) if value.is_floating_point() \
                else torch.equal(single[key], value), key


@pytest.mark.parametrize("method", METHODS)
def test_eager_and_sdpa_agree_with_pruning_on(method):
    inputs = make_inputs()
    sdpa = pruned(BlipPrunedForImageTextRetrieval, method=method)
    eager = pruned(BlipPrunedForImageTextRetrieval, method=method, attn_implementation="eager")
    eager.load_state_dict(sdpa.state_dict())
    assert eager.config._attn_implementation == "eager"
    assert_same_outputs(head_outputs(eager, inputs), head_outputs(sdpa, inputs))


@pytest.mark.parametrize("method", METHODS)
def test_pruning_changes_the_output_but_keeps_it_finite(method):
    inputs = make_inputs()
    model = pruned(BlipPrunedForImageTextRetrieval, method=method)
    unpruned = hf_vltprune.get_pruned_model(model, PruningConfig(method=method))
    reduced, full = head_outputs(model, inputs)["itm"], head_outputs(unpruned, inputs)["itm"]
    assert torch.isfinite(reduced).all()
    assert not torch.allclose(reduced, full)


@pytest.mark.parametrize("method", METHODS)
def test_generate_with_pruning_on(method):
    inputs = make_inputs()
    captioner = pruned(BlipPrunedForConditionalGeneration, method=method, vision_keep=0.3)
    captions = captioner.generate(pixel_values=inputs["pixel_values"], max_new_tokens=5, num_beams=2)
    assert captions.shape[0] == 3 and captions.shape[1] >= 2
    vqa = pruned(BlipPrunedForQuestionAnswering, method=method, vision_keep=0.3, text_keep=0.5)
    answers = vqa.generate(**inputs, max_new_tokens=5)
    assert answers.shape[0] == 3
    loss = vqa(**inputs, labels=inputs["input_ids"][:, :4]).loss
    assert torch.isfinite(loss)


def test_realised_tokens_follow_the_schedule():
    model = pruned(BlipPrunedForImageTextRetrieval, method="tome", vision_keep=0.25, text_keep=1.0)
    inputs = make_inputs(batch=2, length=5, pad_last=False)
    measured = hf_vltprune.measure(model, inputs, latency_repeats=0)
    # 64 patches + CLS; keep 0.25 over 3 layers removes 16 patches per layer: 65 -> 49 -> 33 -> 17 tokens.
    assert measured.tokens_per_layer["vision_model"] == [65.0, 49.0, 33.0]
    out = model.vision_model(pixel_values=inputs["pixel_values"])
    assert out.last_hidden_state.shape[1] == 17
    assert torch.equal(out.token_size.sum(1), torch.full((2,), 65.0))


@pytest.mark.parametrize("method", BUDGETED_METHODS)
def test_gflops_strictly_decrease_as_keep_decreases(method):
    inputs = make_inputs()
    gflops = []
    for keep in (1.0, 0.75, 0.5, 0.25):
        model = pruned(BlipPrunedForImageTextRetrieval, method=method, vision_keep=keep, text_keep=1.0)
        gflops.append(hf_vltprune.measure(model, inputs, latency_repeats=0).gflops_vision)
    assert all(a > b for a, b in zip(gflops, gflops[1:])), gflops


def test_measure_splits_vision_and_text_and_times():
    model = pruned(BlipPrunedForImageTextRetrieval)
    measured = hf_vltprune.measure(model, make_inputs(), latency_repeats=2, warmup=0)
    assert measured.gflops_vision > 0 and measured.gflops_text > 0
    assert measured.gflops >= measured.gflops_vision + measured.gflops_text
    assert measured.latency_ms > 0 and measured.batch_size == 3
    with pytest.raises(ValueError, match="latency_repeats"):
        hf_vltprune.measure(model, make_inputs(), latency_repeats=-1)


def test_text_decoder_mode_is_rejected():
    model = pruned(BlipPrunedForImageTextRetrieval)
    with pytest.raises(ValueError, match="is_decoder"):
        model.text_encoder(input_ids=make_inputs()["input_ids"], is_decoder=True)


def test_hidden_states_and_attentions_are_still_recorded():
    model = pruned(BlipPrunedForImageTextRetrieval, method="tome", vision_keep=0.25, attn_implementation="eager")
    out = model.vision_model(pixel_values=make_inputs()["pixel_values"], output_hidden_states=True,
                             output_attentions=True)
    lengths = [h.shape[1] for h in out.hidden_states]
    assert lengths == [65, 49, 33, 17]  # the input, then each layer's (reduced) output
    assert [a.shape[-1] for a in out.attentions] == [65, 49, 33]


@pytest.mark.parametrize("method", METHODS)
def test_training_step_reaches_every_parameter_that_the_loss_uses(method):
    model = pruned(BlipPrunedForQuestionAnswering, method=method).train()
    inputs = make_inputs()
    loss = model(**inputs, labels=inputs["input_ids"][:, :4]).loss
    loss.backward()
    assert torch.isfinite(loss)
    grads = {name: p.grad for name, p in model.named_parameters()}
    assert grads["vision_model.encoder.layers.0.self_attn.qkv.weight"].abs().sum() > 0
    if method == "crossget":
        # The cross embeddings steer what is merged and are attended to, so they receive gradient.
        assert grads["vision_model.encoder.reducer.cross_embeddings"].abs().sum() > 0
    if method == "madtp":
        # Through the fused tokens' weights and the straight-through keep decisions.
        assert grads["vision_model.encoder.reducer.prototypes"].abs().sum() > 0
    if method == "smarttrim":  # the task loss reaches the first layer's trimmers (test_smarttrim checks more)
        for name in ("token_trimmers.0.2.weight", "head_trimmers.0.2.weight"):
            assert grads[f"vision_model.encoder.reducer.{name}"] is not None, name
