"""The embedded default task: synthetic scenes with captions, true/false statements and questions."""

from .dataset import FEATURES, make_dataset, make_example
from .scenes import COLORS, RELATIONS, SHAPES, SIZES, SceneSpec, render_scene, sample_scene
from .texts import caption_text, question_answer, statement_holds, statement_pair, statement_text

__all__ = [
    "COLORS", "FEATURES", "RELATIONS", "SHAPES", "SIZES", "SceneSpec", "caption_text", "make_dataset", "make_example",
    "question_answer", "render_scene", "sample_scene", "statement_holds", "statement_pair", "statement_text",
]
