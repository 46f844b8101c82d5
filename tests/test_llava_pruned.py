"""Pruning-enabled LLaVA against the stock model: equality at keep 1.0, generation with and without the KV cache,
padded batches against single prompts, what each method selects, saving and loading, LoRA, bad options."""

import pytest
import torch
from transformers import AutoModel, AutoModelForImageTextToText, GenerationMixin

from hf_vltprune import (
    AutoPrunedModel,
    LlavaPrunedConfig,
    LlavaPrunedForConditionalGeneration,
    PruningConfig,
    get_pruned_model,
    pruning_disabled,
)
from hf_vltprune.models.llava.modeling_llava_pruned import LlavaPrunedModel
from hf_vltprune.reduce.visionzip import dominant_and_contextual

from .llava_setup import IMAGE, PATCHES, PROMPTS, padded_batch, pixels, prompt, tiny_llava, tiny_llava_config

# Each method at a budget that removes tokens, as a PruningConfig.
REDUCING = {
    "tome": dict(method="tome", vision_keep=0.5),
    "crossget": dict(method="crossget", vision_keep=0.5),
    "visionzip": dict(method="visionzip", vision_tokens=6),
    "textguided": dict(method="textguided", vision_tokens=6),
    "fastv": dict(method="fastv", vision_keep=0.5),
    "pdrop": dict(method="pdrop", vision_keep=0.25),
    "visionzip-compact": dict(method="visionzip", vision_tokens=6, token_positions="compact"),
}


@pytest.fixture(scope="module")
def stock():
    return tiny_llava()


def pruned(stock, name):
    return get_pruned_model(stock, PruningConfig(**REDUCING[name])).eval()


def greedy(model, input_ids, attention_mask=None, pixel_values=None, **kwargs):
    return model.generate(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values,
                          max_new_tokens=6, do_sample=False, **kwargs)


@pytest.mark.parametrize("method", ["tome", "crossget", "random", "visionzip", "textguided", "fastv", "pdrop"])
def test_keep_one_is_the_stock_model(stock, method):
    ids, mask = padded_batch("left")
    images = torch.cat(pixels())
    model = get_pruned_model(stock, PruningConfig(method=method))
    assert isinstance(model, LlavaPrunedForConditionalGeneration)
    assert torch.equal(model(input_ids=ids, attention_mask=mask, pixel_values=images).logits,
                       stock(input_ids=ids, attention_mask=mask, pixel_values=images).logits)
    assert torch.equal(greedy(model, ids, mask, images), greedy(stock, ids, mask, images))


@pytest.mark.parametrize("name", list(REDUCING))
def test_generation_with_cache_equals_without(stock, name):
    model = pruned(stock, name)
    ids, mask = padded_batch("left")
    images = torch.cat(pixels())
    with_cache = greedy(model, ids, mask, images)
    assert torch.equal(with_cache[:, :ids.shape[1]], ids)  # the sequences start with the prompt as given
    assert torch.equal(with_cache, greedy(model, ids, mask, images, use_cache=False))


@pytest.mark.parametrize("name", list(REDUCING))
def test_padded_batch_equals_each_prompt_alone(stock, name):
    model = pruned(stock, name)
    images = pixels()
    alone = [model(input_ids=torch.tensor([ids]), pixel_values=pix) for ids, pix in zip(PROMPTS, images)]
    # Left padding: generation, sample by sample.
    ids, mask = padded_batch("left")
    batched = greedy(model, ids, mask, torch.cat(images))[:, ids.shape[1]:]
    for row, (ids_alone, pix) in enumerate(zip(PROMPTS, images)):
        single = greedy(model, torch.tensor([ids_alone]), pixel_values=pix)[0, len(ids_alone):]
        assert torch.equal(batched[row], single)
    # Right padding: the logits of every real token.
    ids, mask = padded_batch("right")
    out = model(input_ids=ids, attention_mask=mask, pixel_values=torch.cat(images))
    for row, single in enumerate(alone):
        length = single.logits.shape[1]
        assert length < len(PROMPTS[row])  # tokens were removed
        torch.testing.assert_close(out.logits[row, :length], single.logits[0], atol=1e-5, rtol=1e-5)
        assert torch.equal(out.kept_tokens.index[row, :length], single.kept_tokens.index[0])


def test_every_image_of_a_prompt_is_reduced(stock):
    model = pruned(stock, "visionzip")
    out = model(input_ids=torch.tensor([PROMPTS[1]]), pixel_values=pixels()[1])
    kept_image_tokens = (torch.tensor(PROMPTS[1])[out.kept_tokens.index[0]] == IMAGE).sum()
    assert kept_image_tokens == 2 * 6 and out.logits.shape[1] == len(PROMPTS[1]) - 2 * (PATCHES - 6)


def test_the_language_model_reads_the_reduced_tokens_at_their_positions(stock):
    """Feeding the stock language model the selected features by hand, at the positions the option names, gives
    the same logits."""
    ids = torch.tensor([PROMPTS[0]])
    image = pixels()[0]
    for positions in ("original", "compact"):
        model = get_pruned_model(stock, PruningConfig(method="visionzip", vision_tokens=6,
                                                      token_positions=positions)).eval()
        features = model.model.get_image_features(image)
        tokens, anchors = features.pooler_output[0], features.anchors[0]
        start = PROMPTS[0].index(IMAGE)
        short = torch.tensor([prompt(PROMPTS[0][:start], [IMAGE] * 6, PROMPTS[0][start + PATCHES:])])
        embeds = stock.get_input_embeddings()(short)
        embeds[short == IMAGE] = tokens
        if positions == "original":
            position_ids = torch.tensor([list(range(start)) + (start + anchors).tolist()
                                         + list(range(start + PATCHES, len(PROMPTS[0])))])
        else:
            position_ids = torch.arange(short.shape[1])[None]
        reference = stock(inputs_embeds=embeds, attention_mask=torch.ones_like(short), position_ids=position_ids)
        torch.testing.assert_close(model(input_ids=ids, pixel_values=image).logits, reference.logits)


def test_fastv_keeps_what_the_last_prompt_token_attends_to_most(stock):
    """The one attention row FastV computes equals the row of the stock model's full (eager) attention map."""
    ids, mask = padded_batch("left")
    images = torch.cat(pixels())
    stock.set_attn_implementation("eager")
    try:
        attentions = stock(input_ids=ids, attention_mask=mask, pixel_values=images, output_attentions=True).attentions
    finally:
        stock.set_attn_implementation("sdpa")
    layer = 2  # FastV's default K: scored in layer K-1 = 1
    row = attentions[layer - 1][:, :, -1].mean(dim=1)  # the last prompt token, head average
    model = pruned(stock, "fastv")
    kept = model(input_ids=ids, attention_mask=mask, pixel_values=images).kept_tokens
    for sample in range(len(PROMPTS)):
        visual = (ids[sample] == IMAGE).nonzero().flatten()
        best = visual[row[sample, visual].argsort(descending=True, stable=True)[:len(visual) // 2]]
        kept_visual = kept.index[sample][kept.valid[sample] & (ids[sample, kept.index[sample]] == IMAGE)]
        assert sorted(kept_visual.tolist()) == sorted(best.tolist())


def test_visionzip_keeps_the_patches_cls_attends_to_most(stock):
    model = get_pruned_model(stock, PruningConfig(method="visionzip", vision_tokens=6,
                                                  method_options={"contextual_fraction": 0.0})).eval()
    image = pixels()[0]
    tower = stock.model.vision_tower
    tower.set_attn_implementation("eager")
    try:
        attentions = tower(image, output_attentions=True).attentions
    finally:
        tower.set_attn_implementation("sdpa")
    cls_row = attentions[-2][0, :, 0, 1:].mean(dim=0)  # the layer feeding the projector (vision_feature_layer -2)
    anchors = model.model.get_image_features(image).anchors[0]
    assert sorted(anchors.tolist()) == sorted(cls_row.argsort(descending=True, stable=True)[:6].tolist())


def test_contextual_tokens_average_the_leftover_tokens_they_resemble():
    # Patches 0 and 1 dominate; 2..5 are left over: keys of 2, 3 point one way, of 4, 5 the other.
    features = torch.arange(6, dtype=torch.float)[None, :, None].repeat(1, 1, 2)
    keys = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [1.0, 0.1], [1.0, 0.0], [0.0, 1.0], [0.1, 1.0]]])
    scores = torch.tensor([[0.5, 0.4, 0.0, 0.0, 0.0, 0.0]])
    tokens, anchors = dominant_and_contextual(features, keys, scores, num_dominant=2, num_contextual=2)
    assert anchors.tolist() == [[0, 1, 2, 4]]  # evenly spaced anchors among the leftovers: 2 and 4
    assert tokens[0, :, 0].tolist() == [0.0, 1.0, 2.5, 4.5]  # {2, 3} and {4, 5} averaged


def test_the_answer_does_not_choose_the_tokens_it_is_predicted_from(stock):
    """With labels, prompt-guided methods read only the prompt: two answers to one prompt keep the same tokens."""
    for name in ("fastv", "textguided"):
        model = pruned(stock, name)
        base = PROMPTS[0]
        kept = []
        for answer in ([60, 61], [70, 71]):
            ids = torch.tensor([base + answer])
            labels = torch.full_like(ids, -100)
            labels[0, len(base):] = ids[0, len(base):]
            out = model(input_ids=ids, pixel_values=pixels()[0], labels=labels)
            assert torch.isfinite(out.loss)
            kept.append(out.kept_tokens.index)
        assert torch.equal(*kept)


def test_loss_at_keep_one_is_the_stock_loss(stock):
    ids = torch.tensor([PROMPTS[0] + [60, 61]])
    labels = torch.full_like(ids, -100)
    labels[0, -2:] = ids[0, -2:]
    model = pruned(stock, "pdrop")
    with pruning_disabled(model):
        loss = model(input_ids=ids, pixel_values=pixels()[0], labels=labels).loss
    assert torch.equal(loss, stock(input_ids=ids, pixel_values=pixels()[0], labels=labels).loss)


def test_save_and_load_with_auto_classes(stock, tmp_path):
    stock.save_pretrained(tmp_path / "stock")
    model = LlavaPrunedForConditionalGeneration.from_pretrained(tmp_path / "stock",
                                                                pruning_config=REDUCING["crossget"]).eval()
    assert model.config.base_model_name_or_path == str(tmp_path / "stock")
    ids, mask = padded_batch("left")
    images = torch.cat(pixels())
    with pruning_disabled(model):  # every stock weight arrived (lm_head too: stock files use the older key layout)
        assert torch.equal(model(input_ids=ids, attention_mask=mask, pixel_values=images).logits,
                           stock(input_ids=ids, attention_mask=mask, pixel_values=images).logits)
    model.model.reducer.cross_embeddings.data.normal_()  # as if fine-tuned: must survive the round trip
    expected = model(input_ids=ids, attention_mask=mask, pixel_values=images).logits
    model.save_pretrained(tmp_path / "pruned")

    for loader in (AutoModelForImageTextToText, AutoPrunedModel):
        reloaded = loader.from_pretrained(tmp_path / "pruned").eval()
        assert isinstance(reloaded, LlavaPrunedForConditionalGeneration)
        assert reloaded.pruning_config.method == "crossget"
        assert torch.equal(reloaded(input_ids=ids, attention_mask=mask, pixel_values=images).logits, expected)
    base = AutoModel.from_pretrained(tmp_path / "pruned")
    assert isinstance(base, LlavaPrunedModel)
    card = (tmp_path / "pruned" / "README.md").read_text()
    assert "image-text-to-text" in card
    assert "| vision tokens kept | 50% (8 of 16 per image), reduced in layers 0, 1 |" in card


class AnswerExamples(torch.utils.data.Dataset):
    """Eight training examples: the first prompt with a two-token answer (the only labelled tokens)."""

    def __len__(self):
        return 8

    def __getitem__(self, index):
        ids = torch.tensor(PROMPTS[0] + [60 + index % 2, 61])
        labels = torch.full_like(ids, -100)
        labels[-2:] = ids[-2:]
        return dict(input_ids=ids, labels=labels, attention_mask=torch.ones_like(ids),
                    pixel_values=pixels(seed=index)[0][0])


def test_lora_trains_saves_and_loads(stock, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import Trainer, TrainingArguments

    model = get_peft_model(pruned(stock, "fastv"), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
    args = TrainingArguments(output_dir=str(tmp_path / "run"), per_device_train_batch_size=4, max_steps=3,
                             learning_rate=1e-2, use_cpu=True, report_to=[], save_strategy="no",
                             remove_unused_columns=False)
    Trainer(model=model, args=args, train_dataset=AnswerExamples()).train()
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters() if n in before)
    ids = torch.tensor([PROMPTS[0]])
    expected = model(input_ids=ids, pixel_values=pixels()[0]).logits
    model.save_pretrained(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(pruned(stock, "fastv"), tmp_path / "adapter").eval()
    assert torch.equal(reloaded(input_ids=ids, pixel_values=pixels()[0]).logits, expected)


@pytest.mark.parametrize("settings, field", [
    (dict(method="fastv", vision_keep=0.5, vision_layers=[4]), "vision_layers"),  # the LM has 4 layers
    (dict(method="fastv", vision_keep=0.5, vision_layers=[0]), "vision_layers"),  # no layer before it scores
    (dict(method="pdrop", vision_schedule=[0.9, 0.8, 0.7, 0.6]), "vision_layers"),  # 3 default stages
    (dict(method="visionzip", vision_tokens=PATCHES + 1), "vision_tokens"),  # more than an image has
    (dict(method="tome", vision_keep=0.5, vision_layers=[2]), "vision_layers"),  # layer 2 is never read
    (dict(method="madtp", vision_keep=0.5), "method"),  # needs BLIP's text encoder
    (dict(method="fastv", vision_keep=0.5, token_positions="compact"), "token_positions"),
])
def test_bad_options_fail_early(settings, field):
    with pytest.raises(ValueError, match=f"PruningConfig.{field}="):
        LlavaPrunedConfig(**tiny_llava_config().to_dict(), pruning=settings)


@pytest.mark.parametrize("settings, field", [
    (dict(method="visionzip", vision_layers=[1], vision_keep=0.5), "vision_layers"),  # reduces once
    (dict(method="visionzip", vision_tokens=0), "vision_tokens"),
    (dict(method="visionzip", vision_tokens=6, vision_keep=0.5), "vision_tokens"),
    (dict(method="textguided", method_options={"text_weight": 2.0}), "method_options"),
    (dict(method="tome", token_positions="shifted"), "token_positions"),
])
def test_bad_pruning_config_fails_early(settings, field):
    with pytest.raises(ValueError, match=field):
        PruningConfig(**settings)


def test_blip_rejects_llava_methods():
    from hf_vltprune import BlipPrunedConfig

    from .conftest import tiny_blip_config

    with pytest.raises(ValueError, match="PruningConfig.method='fastv'"):
        BlipPrunedConfig(**tiny_blip_config(), pruning=dict(method="fastv", vision_keep=0.5))


# transformers before 5.2x expands `pixel_values` per image, not per prompt, for beams (stock LLaVA as well), so
# prompts with several images only beam-search correctly where `generate()` expands pre-encoded images per prompt.
MULTI_IMAGE_BEAMS = hasattr(GenerationMixin, "_expand_multimodal_outputs")
ONE_IMAGE_EACH = [PROMPTS[0], prompt([10, 11], "image", [40, 41, 42, 50, 51])]


@pytest.mark.parametrize("name", ["visionzip", "textguided", "fastv"])
@pytest.mark.parametrize("prompts", ["one image each", "two images in one prompt"])
def test_beam_search_matches_each_prompt_alone_and_runs_without_cache(stock, name, prompts):
    if prompts == "two images in one prompt" and not MULTI_IMAGE_BEAMS:
        pytest.skip("this transformers repeats images, not prompts, per beam")
    prompts, images = (ONE_IMAGE_EACH, [pixels()[0], pixels()[1][:1]]) if prompts == "one image each" else \
        (PROMPTS, pixels())
    model = pruned(stock, name)
    ids, mask = padded_batch("left", prompts)
    beams = dict(num_beams=3, max_new_tokens=5, do_sample=False)
    batched = model.generate(input_ids=ids, attention_mask=mask, pixel_values=torch.cat(images), **beams)
    assert torch.equal(batched, model.generate(input_ids=ids, attention_mask=mask, pixel_values=torch.cat(images),
                                               use_cache=False, **beams))
    for row, (ids_alone, pix) in enumerate(zip(prompts, images)):
        single = model.generate(input_ids=torch.tensor([ids_alone]), pixel_values=pix, **beams)
        assert torch.equal(batched[row, ids.shape[1]:], single[0, len(ids_alone):])


@pytest.mark.parametrize("name", ["tome", "visionzip", "textguided", "fastv", "pdrop"])
def test_keep_ratio_warm_up_starts_from_the_stock_model(stock, name):
    """`KeepRatioScheduler` sets progress 0 at the start of training: every visual token is kept."""
    model = pruned(stock, name)
    model.model.reducer.progress = 0.0
    ids, mask = padded_batch("left")
    images = torch.cat(pixels())
    out = model(input_ids=ids, attention_mask=mask, pixel_values=images)
    assert out.logits.shape[1] == ids.shape[1]
    torch.testing.assert_close(out.logits, stock(input_ids=ids, attention_mask=mask, pixel_values=images).logits,
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["visionzip", "fastv"])
def test_pruning_trainer_warms_up_and_distils_from_the_unpruned_self(stock, name, tmp_path):
    """PruningTrainer + KeepRatioScheduler + SelfDistillation on LLaVA: the teacher's logits are read at the
    positions the student kept, and the distillation is 0 at the first step (progress 0: nothing removed yet)."""
    from transformers import TrainingArguments

    from hf_vltprune import KeepRatioScheduler, PruningTrainer, SelfDistillation

    model = pruned(stock, name).train()
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=3, learning_rate=1e-3,
                             use_cpu=True, report_to=[], save_strategy="no", logging_steps=1,
                             remove_unused_columns=False, disable_tqdm=True)
    trainer = PruningTrainer(model=model, args=args, train_dataset=AnswerExamples(),
                             callbacks=[KeepRatioScheduler(warmup_steps=2), SelfDistillation(alpha=1.0)])
    trainer.train()
    kd = [entry["distillation_loss"] for entry in trainer.state.log_history if "distillation_loss" in entry]
    assert len(kd) == 3 and abs(kd[0]) < 1e-6 and kd[-1] > 1e-6
    assert model.model.reducer.progress == 1.0
    flops = [entry["gflops"] for entry in trainer.state.log_history if "gflops" in entry]
    assert flops[-1] < flops[0]  # the realised cost falls as the warm-up reaches the target


@pytest.mark.parametrize("name", ["fastv", "pdrop"])
def test_eager_attention_gives_the_sdpa_results(name):
    """In-LM dropping builds boolean masks for SDPA and additive ones for eager: same logits on real tokens."""
    model = pruned(tiny_llava(), name)
    ids, mask = padded_batch("left")
    images = torch.cat(pixels())
    out = model(input_ids=ids, attention_mask=mask, pixel_values=images)
    real = out.kept_tokens.gather(mask, fill=0).bool()
    model.set_attn_implementation("eager")
    eager = model(input_ids=ids, attention_mask=mask, pixel_values=images)
    torch.testing.assert_close(eager.logits[real], out.logits[real], atol=1e-5, rtol=1e-5)
    assert torch.equal(eager.kept_tokens.index, out.kept_tokens.index)


def test_in_lm_dropping_refuses_attention_without_4d_masks(stock):
    model = pruned(stock, "fastv")
    model.model.language_model.config._attn_implementation = "flash_attention_2"  # as if loaded with it
    with pytest.raises(ValueError, match="attn_implementation must be 'sdpa' or 'eager'"):
        model(input_ids=torch.tensor([PROMPTS[0]]), pixel_values=pixels()[0])
