"""`make_dataset`: the synthetic vision-language task as a `datasets.DatasetDict` (train / validation / test)."""

from __future__ import annotations

import io
import random

from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Value

from .scenes import SceneSpec, render_scene, sample_scene
from .texts import caption_text, question_answer, statement_pair, statement_text

STATEMENT_FEATURES = {name: Value("string") for name in ("kind", "shape", "color", "size", "shape2", "color2",
                                                          "relation")}
STATEMENT_FEATURES["count"] = Value("int32")
OBJECT_FEATURES = {"shape": Value("string"), "color": Value("string"), "size": Value("string"),
                   "x": Value("float32"), "y": Value("float32")}
FEATURES = Features({
    "image": Image(),
    "objects": [OBJECT_FEATURES],
    "caption": Value("string"),
    "statement": Value("string"),
    "statement_struct": STATEMENT_FEATURES,
    "label": ClassLabel(names=["false", "true"]),
    "true_statement": Value("string"),
    "false_statement": Value("string"),
    "question": Value("string"),
    "answer": Value("string"),
    "question_kind": Value("string"),
})
SPLITS = ("train", "validation", "test")
# Bumped whenever generated examples change: `datasets` fingerprints the generator's arguments, not the code it calls,
# so without it a cache would keep serving examples of an older generator (and cached models are named after it).
DATA_VERSION = 4


def make_example(seed: int, split: str, index: int, spec: SceneSpec) -> dict:
    """One example, fully determined by (seed, split, index): the same on every machine and in any order."""
    rng = random.Random(f"{seed}/{split}/{index}")
    objects = sample_scene(rng, spec)
    true, false = statement_pair(rng, objects)
    label = rng.random() < 0.5
    chosen = true if label else false
    question, answer, question_kind = question_answer(rng, objects)
    return dict(
        image=render_scene(objects, rng, spec),
        objects=objects,
        caption=caption_text(objects),
        statement=statement_text(chosen),
        statement_struct=chosen,
        label=int(label),
        true_statement=statement_text(true),
        false_statement=statement_text(false),
        question=question,
        answer=answer,
        question_kind=question_kind,
    )


def _generate(seed: int, split: str, indices: list[int], spec: SceneSpec, version: int = DATA_VERSION):
    for index in indices:
        example = make_example(seed, split, index, spec)
        # JPEG at high quality: noisy backgrounds make PNG encoding the slowest step of generation.
        buffer = io.BytesIO()
        example["image"].save(buffer, format="JPEG", quality=95)
        example["image"] = {"bytes": buffer.getvalue(), "path": None}
        yield example


def make_dataset(
    num_train: int = 8000,
    num_validation: int = 1000,
    num_test: int = 1000,
    seed: int = 0,
    spec: SceneSpec | None = None,
    num_proc: int | None = None,
    cache_dir: str | None = None,
) -> DatasetDict:
    """Generate the train / validation / test splits (deterministic for a seed).

    Each row is one image with its object list, a caption, a true-or-false statement (`label`), the true statement and
    a hard negative differing in one attribute, relation or counted shape, and a question with its short answer.
    """
    spec = spec or SceneSpec()
    sizes = dict(train=num_train, validation=num_validation, test=num_test)
    for name, size in sizes.items():
        if size < 0:
            raise ValueError(f"make_dataset num_{name}={size} is invalid: allowed >= 0.")
    splits = {}
    for split, size in sizes.items():
        if size == 0:
            continue  # `datasets` cannot build an empty generated split
        parallel = num_proc if num_proc and num_proc > 1 and size >= num_proc else None
        splits[split] = Dataset.from_generator(
            _generate,
            features=FEATURES,
            # `datasets` splits list-valued kwargs across the worker processes: each generates its share of indices.
            gen_kwargs=dict(seed=seed, split=split, indices=list(range(size)), spec=spec, version=DATA_VERSION),
            num_proc=parallel,
            cache_dir=cache_dir,
            split=split,
        )
    return DatasetDict(splits)
