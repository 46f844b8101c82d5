"""A tiny LLaVA on the embedded task: a small CLIP tower and a small Llama, trained from scratch with the stock
`Trainer` to answer the synthetic questions by generation; and its accuracy when visual tokens are reduced."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    Trainer,
)

from ..data.processor import build_processor, dataset_corpus
from .base_models import _training_arguments, cached_model_dir, save_trained, task_data
from .presets import Preset, get_preset
from .vqa_training import vqa_accuracy_by_kind

IMAGE_TOKEN = "<image>"
IGNORE_INDEX = -100
# Training steps and batch size of the tiny LLaVA per preset: its language model reads every visual token, so a
# step costs about as much as the BLIP retrieval model's at 1.5x its batch; "tiny" takes 15-25 minutes on 2 CPU
# cores (at 900 steps without captions it had learnt only the answer priors: 34.7%).
LLAVA_SCHEDULES = {"micro": (4, 16), "tiny": (2400, 32), "small": (8000, 128)}


def llava_config(preset: Preset, tokenizer) -> LlavaConfig:
    """A LLaVA of the preset's size: CLIP tower and Llama as wide and deep as the preset's BLIP encoders."""
    vision = CLIPVisionConfig(hidden_size=preset.hidden_size, intermediate_size=4 * preset.hidden_size,
                              num_hidden_layers=preset.vision_layers, num_attention_heads=preset.heads,
                              image_size=preset.image_size, patch_size=preset.patch_size, initializer_range=0.02)
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=preset.hidden_size,
                       intermediate_size=4 * preset.hidden_size, num_hidden_layers=preset.text_layers,
                       num_attention_heads=preset.heads, num_key_value_heads=preset.heads,
                       max_position_embeddings=256, pad_token_id=tokenizer.pad_token_id,
                       bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id)
    return LlavaConfig(vision_config=vision, text_config=text, image_token_id=tokenizer.convert_tokens_to_ids(
        IMAGE_TOKEN), pad_token_id=tokenizer.pad_token_id)


class LlavaVqaCollator:
    """Rows of `make_dataset` -> `[CLS] <image>*N question [DEC]` (+ `answer [SEP]` when training), left-padded.

    Only the answer and its end token carry labels; `generate()` continues after `[DEC]`. In training, a share
    `caption_share` of the rows asks for the caption instead (no question): LLaVA's caption pre-training, whose long
    targets teach the vision tower far faster than one-word answers do.
    """

    def __init__(self, processor, tokens_per_image: int, train: bool = True, caption_share: float = 0.0,
                 seed: int = 0):
        self.processor, self.tokens_per_image, self.train = processor, tokens_per_image, train
        self.caption_share, self.rng = caption_share, random.Random(seed)

    def __call__(self, rows: list[dict]) -> dict:
        tokenizer = self.processor.tokenizer
        image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        sequences, labels = [], []
        for row in rows:
            caption = self.train and self.rng.random() < self.caption_share
            question, target = ("", row["caption"]) if caption else (row["question"], row["answer"])
            prompt = [tokenizer.cls_token_id] + [image_id] * self.tokens_per_image + \
                tokenizer(question, add_special_tokens=False).input_ids + [tokenizer.bos_token_id]
            answer = tokenizer(target, add_special_tokens=False).input_ids + [tokenizer.sep_token_id] \
                if self.train else []
            sequences.append(prompt + answer)
            labels.append([IGNORE_INDEX] * len(prompt) + answer)
        width = max(map(len, sequences))
        pad = tokenizer.pad_token_id
        batch = {
            "input_ids": torch.tensor([[pad] * (width - len(s)) + s for s in sequences]),
            "attention_mask": torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in sequences]),
            "pixel_values": self.processor.image_processor([r["image"].convert("RGB") for r in rows],
                                                           return_tensors="pt").pixel_values,
        }
        if self.train:
            batch["labels"] = torch.tensor([[IGNORE_INDEX] * (width - len(s)) + s for s in labels])
        return batch


def llava_processor(train_split, preset: Preset):
    processor = build_processor(dataset_corpus(train_split), preset.image_size)
    processor.tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    return processor


def train_llava(preset: Preset | str, output_dir: str | Path, seed: int = 0, max_steps: int | None = None,
                report_to: str = "none", caption_share: float = 0.5) -> dict:
    """Train a tiny LLaVA from scratch on the synthetic VQA task (mixed with captioning, `caption_share` of the
    examples); save model, processor and `metrics.json`."""
    preset = get_preset(preset) if isinstance(preset, str) else preset
    steps, batch_size = LLAVA_SCHEDULES.get(preset.name, (preset.max_steps, preset.batch_size))
    preset = dataclasses.replace(preset, max_steps=max_steps or steps, batch_size=batch_size)
    output_dir = Path(output_dir)
    args = _training_arguments(preset, output_dir, preset.max_steps, seed, report_to)
    with args.main_process_first(desc="synthetic data"):  # several processes: one generates, the others read
        data = task_data(preset, seed)
    processor = llava_processor(data["train"], preset)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(llava_config(preset, processor.tokenizer))
    tokens = preset.patch_grid ** 2
    trainer = Trainer(model=model, args=args, train_dataset=data["train"],
                      data_collator=LlavaVqaCollator(processor, tokens, caption_share=caption_share, seed=seed))
    trainer.train()
    metrics = evaluate_llava_vqa(model, data["validation"], processor)
    save_trained(output_dir, model, processor, trainer, metrics, preset=preset.to_dict(), seed=seed,
                 caption_share=caption_share)
    return metrics


def llava_model_dir(preset: Preset | str, seed: int = 0) -> Path:
    """Folder of the cached tiny LLaVA of a preset: trained on first use, reused afterwards."""
    return cached_model_dir("llava-vqa", preset, seed, train_llava)


@torch.no_grad()
def evaluate_llava_vqa(model, dataset, processor, batch_size: int = 64, max_new_tokens: int = 4,
                       progress: bool = False) -> dict[str, float]:
    """Exact-match accuracy of greedy answers, overall and per question kind."""
    model.eval()
    device = next(model.parameters()).device
    tokens = model.config.vision_config.image_size // model.config.vision_config.patch_size
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=LlavaVqaCollator(processor, tokens ** 2, False))
    tokenizer, answers = processor.tokenizer, []
    for batch in tqdm(loader, desc="answering", disable=not progress):
        batch = {k: v.to(device) for k, v in batch.items()}
        generated = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                   eos_token_id=tokenizer.sep_token_id, pad_token_id=tokenizer.pad_token_id)
        answers += tokenizer.batch_decode(generated[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    return vqa_accuracy_by_kind(answers, dataset)


LLAVA_METHODS = ("visionzip", "textguided", "fastv", "pdrop", "tome", "random")


def compare_llava_methods(model, processor, dataset, budgets: list[int], methods=LLAVA_METHODS, seed: int = 0,
                          flops_batch: int = 16) -> list[dict]:
    """VQA accuracy and prefill GFLOPs per sample of the unpruned tiny LLaVA and of each method keeping each number
    of visual tokens per image (`budgets`)."""
    from ..auto import get_pruned_model
    from ..config import PruningConfig
    from ..measure import count_flops

    tokens = (model.config.vision_config.image_size // model.config.vision_config.patch_size) ** 2
    for budget in budgets:
        PruningConfig(method="visionzip", vision_tokens=budget).with_token_count(tokens)  # validated up front
    device = next(model.parameters()).device
    sample = LlavaVqaCollator(processor, tokens, train=False)([dataset[i] for i in range(min(flops_batch,
                                                                                              len(dataset)))])
    sample = {k: v.to(device) for k, v in sample.items()}
    runs = [("unpruned", tokens)] + [(method, budget) for method in methods for budget in budgets]
    rows = []
    for method, budget in tqdm(runs, desc="methods x budgets"):
        pruning = PruningConfig(method="visionzip") if method == "unpruned" else \
            PruningConfig(method=method, vision_tokens=budget)
        candidate = get_pruned_model(model, pruning).eval()
        torch.manual_seed(seed)  # the random baseline draws the same tokens every run
        metrics = evaluate_llava_vqa(candidate, dataset, processor)
        flops, _ = count_flops(candidate, sample)
        rows.append(dict(method=method, visual_tokens=budget, vqa_accuracy=round(100 * metrics["vqa_exact_match"], 2),
                         **{kind.removeprefix("vqa_exact_match_"): round(100 * value, 1)
                            for kind, value in metrics.items() if kind != "vqa_exact_match"},
                         gflops=round(flops / len(sample["input_ids"]) / 1e9, 4)))
    return rows
