"""VQA exact-match accuracy (`evaluate` module shipped with hf_vltprune; loads offline by path)."""

import datasets
import evaluate

from hf_vltprune.metrics import vqa_exact_match


class VqaExactMatch(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Share of answers equal to the reference after lower-casing and removing punctuation.",
            citation="",
            inputs_description="predictions: list of answer strings; references: list of answer strings",
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}),
        )

    def _compute(self, predictions, references):
        return {"vqa_exact_match": vqa_exact_match(predictions, references)}
