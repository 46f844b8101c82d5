"""Accuracy of a (pruned or stock) BLIP retrieval model on the embedded task."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..metrics import itm_accuracy, retrieval_recall
from .retrieval_training import RetrievalCollator


@torch.no_grad()
def itm_predictions(model, dataset, processor, batch_size: int = 64,
                    progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """`(predictions, labels)`: the ITM head's match / no-match decision and the label of each of the split's
    statements, in order (on the CPU)."""
    model.eval()
    device = next(model.parameters()).device
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=RetrievalCollator(processor, train=False))
    predictions, labels = [], []
    for batch in tqdm(loader, desc="evaluating", disable=not progress):
        batch = {k: v.to(device) for k, v in batch.items()}
        labels.append(batch.pop("labels"))
        predictions.append(model(**batch).itm_score.argmax(-1))
    return torch.cat(predictions).cpu(), torch.cat(labels).cpu()


@torch.no_grad()
def evaluate_itm(model, dataset, processor, batch_size: int = 64, progress: bool = False) -> dict[str, float]:
    """ITM accuracy on the split's true/false statements (overall and per statement kind: exists, count,
    relation), and ITC retrieval recall between images and captions."""
    predictions, labels = itm_predictions(model, dataset, processor, batch_size, progress)
    device = next(model.parameters()).device
    image_feats, text_feats = [], []
    captions = processor.tokenizer(list(dataset["caption"]), padding=True, truncation=True, return_tensors="pt")
    for start in range(0, len(dataset), batch_size):
        rows = dataset.select(range(start, min(start + batch_size, len(dataset))))
        pixels = processor.image_processor([r.convert("RGB") for r in rows["image"]], return_tensors="pt")
        ids = captions.input_ids[start:start + batch_size].to(device)
        mask = captions.attention_mask[start:start + batch_size].to(device)
        image_embeds = model.vision_model(pixel_values=pixels.pixel_values.to(device)).last_hidden_state
        text = model.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        image_feats.append(torch.nn.functional.normalize(model.vision_proj(image_embeds[:, 0]), dim=-1))
        text_feats.append(torch.nn.functional.normalize(model.text_proj(text[:, 0]), dim=-1))
    similarity = torch.cat(image_feats) @ torch.cat(text_feats).t()
    kinds = [struct["kind"] for struct in dataset["statement_struct"]]
    per_kind = {f"itm_accuracy_{kind}": itm_accuracy(predictions[selected], labels[selected])
                for kind in sorted(set(kinds)) if (selected := torch.tensor([k == kind for k in kinds])).any()}
    return {"itm_accuracy": itm_accuracy(predictions, labels), **per_kind, **retrieval_recall(similarity.cpu())}
