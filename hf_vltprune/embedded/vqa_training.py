"""VQA on the embedded task: a BLIP question-answering model trained from scratch with the stock `Trainer`."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..metrics import vqa_exact_match


class VqaCollator:
    """Rows of `make_dataset` -> pixels and question tokens, plus (training) the answer as decoder input and labels.

    The answer starts with the decoder's start token (`[DEC]`, what `generate()` starts from); padding is -100 in
    `labels` so it carries no loss.
    """

    def __init__(self, processor, train: bool = True):
        self.processor, self.train = processor, train

    def __call__(self, rows: list[dict]) -> dict:
        tokenizer = self.processor.tokenizer
        images = [row["image"].convert("RGB") for row in rows]
        question = tokenizer([row["question"] for row in rows], padding=True, truncation=True, return_tensors="pt")
        batch = {"pixel_values": self.processor.image_processor(images, return_tensors="pt").pixel_values,
                 "input_ids": question.input_ids, "attention_mask": question.attention_mask}
        if self.train:
            answer = tokenizer([row["answer"] for row in rows], padding=True, return_tensors="pt")
            decoder_ids = answer.input_ids.clone()
            decoder_ids[:, 0] = tokenizer.bos_token_id
            batch["decoder_input_ids"] = decoder_ids
            batch["decoder_attention_mask"] = answer.attention_mask
            batch["labels"] = decoder_ids.masked_fill(answer.attention_mask == 0, -100)
        return batch


@torch.no_grad()
def evaluate_vqa(model, dataset, processor, batch_size: int = 64, max_new_tokens: int = 5,
                 progress: bool = False) -> dict[str, float]:
    """Exact-match accuracy of generated answers, overall and per question kind."""
    model.eval()
    device = next(model.parameters()).device
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=VqaCollator(processor, train=False))
    answers = []
    for batch in tqdm(loader, desc="answering", disable=not progress):
        generated = model.generate(**{k: v.to(device) for k, v in batch.items()}, max_new_tokens=max_new_tokens)
        answers += processor.tokenizer.batch_decode(generated, skip_special_tokens=True)
    return vqa_accuracy_by_kind(answers, dataset)


def vqa_accuracy_by_kind(answers: list[str], dataset) -> dict[str, float]:
    """Exact match of `answers` against the split's answers, overall and per question kind."""
    references, kinds = list(dataset["answer"]), list(dataset["question_kind"])
    result = {"vqa_exact_match": vqa_exact_match(answers, references)}
    for kind in sorted(set(kinds)):
        pairs = [(a, r) for a, r, k in zip(answers, references, kinds) if k == kind]
        result[f"vqa_exact_match_{kind}"] = vqa_exact_match(*zip(*pairs))
    return result
