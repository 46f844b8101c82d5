"""Grounding supervision: targets true to the scene, losses that reward attending to the named objects."""

import math

import pytest
import torch
from transformers import BlipConfig, BlipForImageTextRetrieval, TrainingArguments

from hf_vltprune.data import SceneSpec, make_example, statement_text
from hf_vltprune.data.processor import build_processor
from hf_vltprune.data.texts import empty_statement
from hf_vltprune.embedded.grounding import (
    COLOR_IDS,
    SHAPE_IDS,
    GroundingHeads,
    covered_patches,
    grid_centres,
    noun_targets,
    patch_labels,
)
from hf_vltprune.embedded.retrieval_training import (
    RetrievalCollator,
    RetrievalPretrainer,
    RetrievalPretrainingModel,
    itc_itm_loss,
)

GRID = 8
RED_CIRCLE = dict(shape="circle", color="red", size="small", x=0.1875, y=0.1875)  # centre of patch (1, 1)
BLUE_SQUARE = dict(shape="square", color="blue", size="large", x=0.8125, y=0.6875)  # centre of patch (5, 6)
BLUE_CIRCLE = dict(shape="circle", color="blue", size="small", x=0.5625, y=0.1875)  # centre of patch (1, 4)
SCENE = [RED_CIRCLE, BLUE_SQUARE, BLUE_CIRCLE]


@pytest.fixture(scope="module")
def micro_rows():
    return [make_example(0, "train", i, SceneSpec(image_size=32, clutter=5, max_objects=3)) for i in range(6)]


@pytest.fixture(scope="module")
def tiny_processor(micro_rows):
    texts = [row[column] for row in micro_rows for column in ("caption", "true_statement", "false_statement")]
    words = ["there are two circles.", "there is a red square.", "the red circle is left of the blue square."]
    return build_processor(texts + words * 20, image_size=32)


def statement(kind, **fields):
    return dict(empty_statement(kind), **fields)


def test_covered_patches_are_those_under_the_object():
    small = covered_patches([RED_CIRCLE], GRID).view(GRID, GRID)
    large = covered_patches([BLUE_SQUARE], GRID).view(GRID, GRID)
    assert small[1, 1] and small.sum() == 1  # a small object centred in a patch covers that patch only
    assert large[5, 6] and large.sum() > 1 and not large[:3].any()
    assert not (small & large).any()


def test_patch_labels_name_the_object_under_each_patch():
    color, shape = patch_labels(SCENE, GRID)
    assert color[1 * GRID + 1] == COLOR_IDS["red"] and shape[1 * GRID + 1] == SHAPE_IDS["circle"]
    assert color[5 * GRID + 6] == COLOR_IDS["blue"] and shape[5 * GRID + 6] == SHAPE_IDS["square"]
    assert color[0] == 0 and shape[0] == 0  # background
    assert grid_centres(GRID)[5 * GRID + 6].tolist() == [0.8125, 0.6875]  # (x, y) of patch row 5, column 6


def test_noun_targets_point_at_the_named_tokens_and_objects(tiny_processor):
    statements = [
        statement("relation", shape="circle", color="red", shape2="square", color2="blue", relation="left of"),
        statement("count", shape="circle", count=2),
        statement("exists", shape="square", color="red"),  # a hard negative: no red square in the scene
    ]
    texts = [statement_text(s) for s in statements]
    encoded = tiny_processor.tokenizer(texts, padding=True, return_offsets_mapping=True, return_tensors="pt")
    targets = noun_targets(encoded.offset_mapping, texts, statements, [SCENE] * 3, GRID)
    assert targets["noun_rows"].tolist() == [0, 0, 1]  # the absent red square names nothing
    nouns = [tiny_processor.tokenizer.decode(encoded.input_ids[r, t]) for r, t in
             zip(targets["noun_rows"], targets["noun_tokens"])]
    assert nouns[0] == "circle" and nouns[1] == "square" and nouns[2].startswith("circle")
    assert torch.equal(targets["noun_patches"][0], covered_patches([RED_CIRCLE], GRID))
    assert torch.equal(targets["noun_patches"][2], covered_patches([RED_CIRCLE, BLUE_CIRCLE], GRID))
    assert targets["noun_centres"][1].tolist() == [BLUE_SQUARE["x"], BLUE_SQUARE["y"]]
    assert targets["noun_centres"][2].isnan().all()  # two circles: no single centre


def test_attention_grounding_loss_rewards_attention_on_the_named_patches():
    heads = GroundingHeads(16, 16)
    patches = covered_patches([BLUE_SQUARE], GRID)
    batch = {
        "patch_color": torch.zeros(1, GRID * GRID, dtype=torch.long),
        "patch_shape": torch.zeros(1, GRID * GRID, dtype=torch.long),
        "noun_rows": torch.tensor([0]), "noun_tokens": torch.tensor([2]),
        "noun_patches": patches[None], "noun_centres": torch.tensor([[0.8125, 0.6875]]),
    }
    image, fused = torch.randn(1, GRID * GRID + 1, 16), torch.randn(1, 5, 16)

    def attention_on(target):
        attention = torch.zeros(1, 2, 5, GRID * GRID + 1)
        attention[..., 1:] = target.float() / target.sum()
        return attention

    on_target = heads(image, fused, attention_on(patches), batch)["attention_grounding"]
    elsewhere = heads(image, fused, attention_on(~patches), batch)["attention_grounding"]
    assert on_target.item() == pytest.approx(0.0, abs=1e-5)
    assert elsewhere.item() > 10
    uniform = heads(image, fused, torch.full((1, 2, 5, GRID * GRID + 1), 1 / (GRID * GRID + 1)), batch)
    assert uniform["attention_grounding"].item() == pytest.approx(-math.log(patches.sum() / (GRID * GRID + 1)),
                                                                  rel=1e-4)
    with pytest.raises(ValueError, match="patch_grid"):  # a pruned vision model no longer has the targets' patches
        heads(image[:, :33], fused, attention_on(patches)[..., :33], batch)


def test_grounding_losses_train_beside_a_stock_blip(tiny_processor, micro_rows):
    config = BlipConfig(
        text_config=dict(vocab_size=len(tiny_processor.tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=64,
                         pad_token_id=tiny_processor.tokenizer.pad_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=32, image_text_hidden_size=32)
    model = RetrievalPretrainingModel(BlipForImageTextRetrieval(config), grounding_weight=0.5)
    model.eval()  # no dropout: the same loss twice
    batch = RetrievalCollator(tiny_processor, train=True, patch_grid=4)(micro_rows)
    assert len(batch["noun_rows"]) > 0
    loss, parts = itc_itm_loss(model.blip, batch, grounding=model.grounding, grounding_weight=0.5)
    grounding_parts = {"patch_labels", "patch_positions", "attention_grounding"}
    assert grounding_parts <= set(parts)
    plain_loss, plain_parts = itc_itm_loss(model.blip, batch)
    assert not grounding_parts & set(plain_parts)
    assert loss.item() == pytest.approx(plain_loss.item() + 0.5 * sum(v for k, v in parts.items() if k in
                                        grounding_parts | {"noun_positions"}), rel=1e-5)
    assert model(**batch)["loss"].item() == pytest.approx(loss.item(), rel=1e-6)  # what the Trainer calls
    loss.backward()
    for head in (model.grounding.patch_color, model.grounding.patch_shape, model.grounding.patch_position):
        assert head.weight.grad.abs().sum() > 0
    assert model.blip.text_encoder.encoder.layer[0].crossattention.self.query.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="patch_grid"):
        itc_itm_loss(model.blip, RetrievalCollator(tiny_processor, train=True)(micro_rows), grounding=model.grounding)


def test_the_pretrainer_wraps_a_bare_blip_and_rejects_a_negative_grounding_weight(tmp_path, blip_config):
    blip = BlipForImageTextRetrieval(blip_config)
    trainer = RetrievalPretrainer(model=blip, args=TrainingArguments(str(tmp_path), use_cpu=True, report_to="none"))
    assert isinstance(trainer.model, RetrievalPretrainingModel)
    assert trainer.model.blip is blip and trainer.model.grounding is None  # ITC + ITM only
    with pytest.raises(ValueError, match="grounding_weight=-1"):
        RetrievalPretrainingModel(blip, grounding_weight=-1)
