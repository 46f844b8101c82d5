"""The synthetic task: deterministic, labels true to the scene, processor round trip."""

import random

import pytest

from hf_vltprune.data import (
    COLORS,
    SHAPES,
    SceneSpec,
    make_dataset,
    make_example,
    sample_scene,
    statement_holds,
    statement_pair,
    statement_text,
)
from hf_vltprune.data.processor import build_processor, dataset_corpus
from hf_vltprune.data.texts import empty_statement

SPEC = SceneSpec(image_size=64, clutter=10)


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    return make_dataset(40, 10, 10, seed=3, spec=SPEC, cache_dir=str(tmp_path_factory.mktemp("ds")))


def test_same_seed_gives_identical_data(tmp_path):
    a = make_dataset(12, 0, 0, seed=5, spec=SPEC, cache_dir=str(tmp_path / "a"))["train"]
    b = make_dataset(12, 0, 0, seed=5, spec=SPEC, cache_dir=str(tmp_path / "b"))["train"]
    c = make_dataset(12, 0, 0, seed=6, spec=SPEC, cache_dir=str(tmp_path / "c"))["train"]
    assert a.to_dict() == b.to_dict()
    assert a.to_dict()["statement"] != c.to_dict()["statement"]


def test_parallel_generation_equals_sequential(tmp_path):
    one = make_dataset(10, 0, 0, seed=1, spec=SPEC, cache_dir=str(tmp_path / "1"))["train"]
    two = make_dataset(10, 0, 0, seed=1, spec=SPEC, num_proc=2, cache_dir=str(tmp_path / "2"))["train"]
    assert sorted(one["statement"]) == sorted(two["statement"])


def test_stored_labels_agree_with_the_scene(small_dataset):
    for split in small_dataset.values():
        for row in split:
            assert statement_holds(row["objects"], row["statement_struct"]) == bool(row["label"])


def test_hard_negatives_are_false_and_true_statements_true():
    rng = random.Random(0)
    for index in range(300):
        example = make_example(0, "train", index, SPEC)
        true, false = statement_pair(rng, example["objects"])
        assert statement_holds(example["objects"], true)
        assert not statement_holds(example["objects"], false)
        # A hard negative differs from the truth in exactly one field.
        assert sum(true[k] != false[k] for k in true) == 1


def test_stated_counts_do_not_give_the_label_away():
    # Text alone must not tell a true count statement from a false one: each stated number is as often true as false.
    rng, spec = random.Random(0), SceneSpec(image_size=64, max_objects=4)
    truth = {}
    for _ in range(3000):
        true, false = statement_pair(rng, sample_scene(rng, spec), kinds=("count",))
        assert true["count"] == false["count"]
        for statement, label in ((true, 1), (false, 0)):
            truth.setdefault(statement["count"], []).append(label)
    assert {0, 1, 2} <= set(truth)
    for number, labels in truth.items():
        assert sum(labels) / len(labels) == 0.5, number


def test_scenes_use_the_declared_vocabulary_and_sizes():
    objects = [o for i in range(100) for o in make_example(1, "train", i, SPEC)["objects"]]
    assert {o["shape"] for o in objects} == set(SHAPES)
    assert {o["color"] for o in objects} == set(COLORS)
    assert {o["size"] for o in objects} == {"small", "large"}
    counts = {len(make_example(2, "train", i, SPEC)["objects"]) for i in range(100)}
    assert counts == set(range(1, 7))
    assert make_example(0, "test", 0, SPEC)["image"].size == (64, 64)


def test_grid_scenes_line_every_object_up_with_the_patches():
    from hf_vltprune.embedded.grounding import covered_patches

    spec = SceneSpec(image_size=128, max_objects=4, grid=8)  # the tiny preset: 16 px patches
    scenes = [sample_scene(random.Random(i), spec) for i in range(300)]
    assert {len(objects) for objects in scenes} == {1, 2, 3, 4}
    for objects in scenes:
        for obj in objects:
            # small (15 px): centred in a patch, covering it alone; large (28 px): on a patch corner, covering 2 x 2
            offset, patches = (0.5, 1) if obj["size"] == "small" else (0.0, 4)
            assert (obj["x"] * 8 - offset) % 1 == 0 and (obj["y"] * 8 - offset) % 1 == 0, obj
            assert covered_patches([obj], 8).sum() == patches
        for a in objects:  # no relation is a tie between the two axes
            assert all(abs(a["x"] - b["x"]) != abs(a["y"] - b["y"]) for b in objects if b is not a)
    free = [o for i in range(50) for o in sample_scene(random.Random(i), SceneSpec(image_size=128))]
    assert not all((o["x"] * 8 - 0.5) % 1 == 0 for o in free)  # without a grid, anywhere
    with pytest.raises(ValueError, match="grid"):
        SceneSpec(image_size=64, grid=1)


def test_count_texts_use_english_plurals():
    count = dict(empty_statement("count"), shape="cross", count=2)
    assert statement_text(count) == "there are two crosses."
    assert statement_text(dict(count, count=1)) == "there is one cross."
    assert statement_text(dict(count, shape="circle", count=0)) == "there are zero circles."
    questions = {make_example(0, "train", i, SPEC)["question"] for i in range(300)}
    assert "how many crosses are there?" in questions
    assert not any("crosss" in q for q in questions)


def test_bad_scene_settings_raise():
    with pytest.raises(ValueError, match="image_size"):
        SceneSpec(image_size=8)
    with pytest.raises(ValueError, match="max_objects"):
        SceneSpec(min_objects=3, max_objects=2)
    with pytest.raises(ValueError, match="num_train"):
        make_dataset(-1, 1, 1)


def test_processor_round_trip(small_dataset, tmp_path):
    from transformers import AutoProcessor

    processor = build_processor(dataset_corpus(small_dataset["train"]), image_size=64)
    processor.save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path)
    text = small_dataset["train"][0]["caption"]
    ids = loaded.tokenizer(text).input_ids
    assert loaded.tokenizer.decode(ids, skip_special_tokens=True).replace(" ,", ",").replace(" .", ".") == text
    assert "[UNK]" not in loaded.tokenizer.convert_ids_to_tokens(ids)
    pixels = loaded(images=small_dataset["train"][0]["image"], text=text, return_tensors="pt")["pixel_values"]
    assert pixels.shape == (1, 3, 64, 64)
    assert loaded.tokenizer.bos_token == "[DEC]" and loaded.tokenizer.pad_token_id == 0
