"""Image-text matching accuracy (`evaluate` module shipped with hf_vltprune; loads offline by path)."""

import datasets
import evaluate

from hf_vltprune.metrics import itm_accuracy


class ItmAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Share of image-text pairs whose match prediction (0/1) equals the label.",
            citation="",
            inputs_description="predictions: list of 0/1; references: list of 0/1",
            features=datasets.Features({"predictions": datasets.Value("int32"),
                                        "references": datasets.Value("int32")}),
        )

    def _compute(self, predictions, references):
        return {"itm_accuracy": itm_accuracy(predictions, references)}
