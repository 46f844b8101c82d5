"""Accuracy against GFLOPs for every method and budget on the embedded task (the demo and the quality benchmark)."""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..auto import get_pruned_model
from ..config import PruningConfig
from ..measure import measure
from ..reduce import get_reducer_class, reducer_names
from ..report import markdown_table, save_report
from .evaluation import evaluate_itm
from .finetuning import finetune_pruned
from .retrieval_training import RetrievalCollator

# What fine-tuned best on the embedded benchmark (docs/benchmarks.md, runs 8, 11 and 14). The methods' own defaults
# stay the paper's (MADTP's threshold) and what an untrained reducer needs (SmartTrim keeps everything until trained).
FINETUNE_OPTIONS = {"smarttrim": {"trim_heads": False, "attention_prior": 10.0, "fuse_dropped": True},
                    "madtp": {"importance_mass": 0.98}}
FINETUNE_REDUCER_LEARNING_RATE = {"smarttrim": 1e-3, "madtp": 1e-2}


def check_demo_options(budgets: list[float], finetune_steps: int) -> None:
    """`ValueError` for a `vision_keep` budget or a `finetune_steps` out of range."""
    for keep in budgets:
        PruningConfig(vision_keep=keep)
    if isinstance(finetune_steps, bool) or not isinstance(finetune_steps, int) or finetune_steps < 0:
        raise ValueError(f"finetune_steps={finetune_steps!r} is invalid: allowed integers >= 0 (0: no fine-tuning).")


def compare_methods(model, processor, dataset, budgets: list[float], methods: list[str] | None = None,
                    seed: int = 0, latency_batch: int = 32, finetune_steps: int = 0,
                    train_dataset=None) -> list[dict]:
    """Evaluate the unpruned model and each method at each `vision_keep` budget.

    Each row: method, vision_keep, status, ITM accuracy, retrieval recall@1 (image to text), GFLOPs per sample (each
    of `latency_batch` validation examples run alone, so per-instance methods are charged what they decided for it),
    `gflops_batch` (per sample when those examples run as one batch, which per-instance methods cut only to their
    longest row), latency (median ms for that batch) and `keep_vision` (vision tokens entering the last layer over
    those entering the first, mean over those examples). Methods that only work once fine-tuned
    (MADTP, SmartTrim) get a short fine-tune of `finetune_steps` on `train_dataset` (`finetune_pruned`, with
    `FINETUNE_OPTIONS`; `status="fine-tuned"`), or with `finetune_steps=0` are scored as they are
    (`status="untrained"`); the other methods and the unpruned model are not trained. `methods` defaults to every
    method built for BLIP.
    """
    check_demo_options(budgets, finetune_steps)  # before the long work starts
    if finetune_steps and train_dataset is None:
        raise ValueError("finetune_steps > 0 needs a train_dataset to fine-tune the learned methods on.")
    methods = list(methods or reducer_names("blip"))
    unknown = [m for m in methods if m not in reducer_names("blip")]
    if unknown:
        raise ValueError(f"methods {unknown} are not BLIP methods: allowed {reducer_names('blip')}.")
    device = next(model.parameters()).device
    sample = RetrievalCollator(processor, train=False)([dataset[i] for i in range(min(latency_batch, len(dataset)))])
    sample = {k: v.to(device) for k, v in sample.items() if k != "labels"}

    runs = [("unpruned", 1.0)] + [(m, keep) for m in methods for keep in budgets]
    rows = []
    for method, keep in tqdm(runs, desc="methods x budgets"):
        learned = method != "unpruned" and get_reducer_class(method).needs_training
        finetune = learned and finetune_steps > 0
        pruning = PruningConfig(method="tome" if method == "unpruned" else method, vision_keep=keep,
                                method_options=FINETUNE_OPTIONS.get(method, {}) if finetune else {})
        candidate = get_pruned_model(model, pruning)
        if finetune:
            torch.manual_seed(seed)
            with tempfile.TemporaryDirectory() as folder:
                candidate = finetune_pruned(candidate, processor, train_dataset, folder, max_steps=finetune_steps,
                                            reducer_learning_rate=FINETUNE_REDUCER_LEARNING_RATE.get(method, 1e-2),
                                            seed=seed, disable_tqdm=True).model
        candidate.eval()
        torch.manual_seed(seed)  # the random baseline draws the same tokens every run
        metrics = evaluate_itm(candidate, dataset, processor)
        cost = measure(candidate, sample, latency_repeats=5, warmup=1, per_sample=True)
        status = ("fine-tuned" if finetune else "untrained") if learned else "ok"
        rows.append(dict(method=method, vision_keep=keep, status=status,
                         itm_accuracy=round(100 * metrics["itm_accuracy"], 2),
                         recall_at_1=round(100 * metrics["image_to_text_recall@1"], 2),
                         gflops=round(statistics.mean(cost.gflops_per_sample), 4),
                         gflops_batch=round(cost.gflops, 4), latency_ms=round(cost.latency_ms, 2),
                         keep_vision=round(statistics.mean(cost.keep_per_sample["vision_model"]), 3)))
    return rows


def discrimination(rows: list[dict], keep: float = 0.25) -> float | None:
    """Accuracy points the unpruned model holds over the `random` floor at `keep` (None if either is absent)."""
    full = next((r for r in rows if r["method"] == "unpruned"), None)
    floor = next((r for r in rows if r["method"] == "random" and r["vision_keep"] == keep and r["status"] == "ok"),
                 None)
    return None if full is None or floor is None else round(full["itm_accuracy"] - floor["itm_accuracy"], 2)


def write_report(rows: list[dict], output_dir: Path, title: str, meta: dict | None = None) -> str:
    """`quality.json`, `quality.md` (a table) and `quality.png` (accuracy against GFLOPs) in `output_dir`."""
    gap = discrimination(rows)
    columns = ["method", "vision_keep", "status", "itm_accuracy", "recall_at_1", "gflops", "gflops_batch",
               "latency_ms", "keep_vision"]
    lines = [f"{title}", "", *markdown_table(rows, columns)]
    if gap is not None:
        verdict = "discriminates" if gap >= 5 else "does NOT discriminate (needs >= 5 points)"
        lines += ["", f"Unpruned minus random at keep 0.25: {gap} points: the task {verdict}."]
    table = save_report(output_dir, "quality", dict(meta or {}, unpruned_minus_random_at_0_25=gap), rows, lines)
    _plot(rows, Path(output_dir) / "quality.png", title)
    return table


def _plot(rows: list[dict], path: Path, title: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # plotting is optional: the `bench` extra installs matplotlib
        print(f"matplotlib is not installed (pip install 'hf-vltprune[bench]'): no plot written to {path}")
        return
    figure, axis = plt.subplots(figsize=(6, 4))
    done = [r for r in rows if r["status"] in ("ok", "untrained", "fine-tuned")]
    for method, status in dict.fromkeys((r["method"], r["status"]) for r in done):
        points = sorted((r["gflops"], r["itm_accuracy"]) for r in done if r["method"] == method)
        axis.plot(*zip(*points), marker="x" if status == "untrained" else "o", label=method + (
            "" if status == "ok" else f" ({status})"))
    axis.set_xlabel("GFLOPs per sample")
    axis.set_ylabel("ITM accuracy (%)")
    axis.set_title(title, fontsize=9)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
