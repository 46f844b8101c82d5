"""Retrieval recall@1/5 in both directions (`evaluate` module shipped with hf_vltprune; loads offline by path).

Each prediction is one image's row of similarities to all texts; text i belongs to image i.
"""

import datasets
import evaluate

from hf_vltprune.metrics import retrieval_recall


class RetrievalRecall(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Recall@1 and @5, image-to-text and text-to-image, from a square similarity matrix.",
            citation="",
            inputs_description="predictions: one list of similarities per image (row i: image i against all texts)",
            features=datasets.Features({"predictions": datasets.Sequence(datasets.Value("float32"))}),
        )

    def _compute(self, predictions):
        return retrieval_recall(predictions)
