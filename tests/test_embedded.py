"""The embedded default end to end on the `micro` preset (seconds): train, evaluate, compare methods, CLI."""

import dataclasses
import json

import pytest
import torch
from safetensors import safe_open

from hf_vltprune import PruningConfig, get_pruned_model, metrics
from hf_vltprune.cli import main
from hf_vltprune.data.dataset import DATA_VERSION
from hf_vltprune.embedded import finetune_pruned, get_preset, load_base_model, task_data
from hf_vltprune.embedded.quality import discrimination
from hf_vltprune.reduce import reducer_names


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_VLTPRUNE_CACHE", str(folder))
        yield folder


def test_train_base_eval_and_demo_on_the_micro_preset(cache, tmp_path, capsys):
    model_dir = tmp_path / "model"
    assert main(["train-base", "--preset", "micro", "--output", str(model_dir)]) == 0
    record = json.loads((model_dir / "metrics.json").read_text())
    assert 0.0 <= record["validation"]["itm_accuracy"] <= 1.0
    assert any("itc" in entry for entry in record["log_history"])  # the ITC/ITM parts reach the Trainer logs
    assert any("attention_grounding" in entry for entry in record["log_history"])  # and the grounding losses
    with safe_open(model_dir / "model.safetensors", "pt") as saved:  # the heads stay behind: a stock BLIP
        assert not any("grounding" in key for key in saved.keys())

    assert main(["eval", str(model_dir), "--preset", "micro", "--output", str(tmp_path / "eval.json")]) == 0
    evaluated = json.loads((tmp_path / "eval.json").read_text())
    assert evaluated == record["validation"]
    assert {k for k in evaluated if k.startswith("itm_accuracy_")} <= {
        "itm_accuracy_exists", "itm_accuracy_count", "itm_accuracy_relation"}

    # A pruned copy evaluated with --attach states both models' accuracy and cost in its model card.
    pruned_dir = tmp_path / "pruned"
    assert main(["convert", str(model_dir), str(pruned_dir), "--vision-keep", "0.5"]) == 0
    assert main(["eval", str(model_dir), "--preset", "micro", "--attach"]) == 2  # stock: nothing to compare
    assert main(["eval", str(pruned_dir), "--preset", "micro", "--attach"]) == 0
    attached = json.loads((pruned_dir / "pruning_results.json").read_text())
    assert attached["unpruned"]["itm_accuracy"] == evaluated["itm_accuracy"]  # pruning off = the stock model
    assert attached["pruned"]["gflops"] < attached["unpruned"]["gflops"]
    card = (pruned_dir / "README.md").read_text()
    assert f"| `itm_accuracy` | {evaluated['itm_accuracy']:.1%} |" in card and "model-index" in card

    assert main(["demo", "--preset", "micro", "--output", str(tmp_path / "demo"), "--budgets", "0.5",
                 "--finetune-steps", "2"]) == 0
    report = json.loads((tmp_path / "demo" / "quality.json").read_text())
    rows = {(r["method"], r["vision_keep"]): r for r in report["rows"]}
    assert {("unpruned", 1.0), ("tome", 0.5), ("crossget", 0.5), ("random", 0.5)} <= set(rows)
    assert {method for method, _ in rows} == {"unpruned", *reducer_names("blip")}  # LLaVA-only methods left out
    assert rows[("madtp", 0.5)]["status"] == rows[("smarttrim", 0.5)]["status"] == "fine-tuned"
    assert rows[("tome", 0.5)]["status"] == "ok"
    assert rows[("tome", 0.5)]["gflops"] < rows[("unpruned", 1.0)]["gflops"]
    # GFLOPs of each sample run alone: a batch pays for padding (statements differ in length) and, with per-instance
    # methods, for its longest row.
    assert all(r["gflops"] <= r["gflops_batch"] for r in report["rows"])
    assert rows[("unpruned", 1.0)]["gflops"] < rows[("unpruned", 1.0)]["gflops_batch"]
    assert rows[("unpruned", 1.0)]["keep_vision"] == 1.0 > rows[("tome", 0.5)]["keep_vision"]
    assert (tmp_path / "demo" / "quality.png").stat().st_size > 0
    assert "| tome | 0.5 | ok |" in (tmp_path / "demo" / "quality.md").read_text()
    # The demo trained the cached base model once; a second call reuses it.
    cached = cache / "models" / f"blip-itm-micro-seed0-data{DATA_VERSION}" / "metrics.json"
    stamp = cached.stat().st_mtime
    assert main(["demo", "--preset", "micro", "--output", str(tmp_path / "demo2"), "--budgets", "0.5",
                 "--finetune-steps", "0"]) == 0
    assert cached.stat().st_mtime == stamp
    again = json.loads((tmp_path / "demo2" / "quality.json").read_text())["rows"]
    assert {r["status"] for r in again if r["method"] in ("madtp", "smarttrim")} == {"untrained"}


def test_finetune_pruned_warms_the_keep_ratio_up_along_the_given_shape(cache, tmp_path):
    """Logged after each of 5 steps (warm-up over 4; each log shows the progress its step ran at: 0, 1/4, 1/2, 3/4,
    1): a cosine warm-up keeps more tokens early than a linear one and both reach the same targets; an unknown shape
    is refused before any training."""
    preset = get_preset("micro")
    base, processor = load_base_model(preset)
    train = task_data(preset)["train"]
    keeps = {}
    for shape in ("linear", "cosine"):
        model = get_pruned_model(base, PruningConfig(method="tome", vision_keep=0.2))
        trainer = finetune_pruned(model, processor, train, tmp_path / shape, max_steps=5, batch_size=4,
                                  warmup_steps=4, warmup_shape=shape, disable_tqdm=True)
        keeps[shape] = [entry["keep_vision_model"] for entry in trainer.state.log_history if "loss" in entry]
    assert keeps["linear"][0] == keeps["cosine"][0] == 1.0
    assert keeps["cosine"][1] > keeps["linear"][1]
    assert keeps["cosine"][-1] == keeps["linear"][-1] < 1.0
    with pytest.raises(ValueError, match="KeepRatioScheduler.shape"):
        finetune_pruned(model, processor, train, tmp_path / "bad", warmup_shape="exponential")


def test_vqa_base_model_trains_generates_and_evaluates(cache, tmp_path):
    model_dir = tmp_path / "vqa"
    assert main(["train-base", "--task", "vqa", "--preset", "micro", "--output", str(model_dir), "--max-steps",
                 "3"]) == 0
    record = json.loads((model_dir / "metrics.json").read_text())
    assert record["task"] == "vqa" and 0.0 <= record["validation"]["vqa_exact_match"] <= 1.0
    assert any(k.startswith("vqa_exact_match_") for k in record["validation"])
    assert main(["eval", str(model_dir), "--preset", "micro", "--output", str(tmp_path / "eval.json")]) == 0
    assert json.loads((tmp_path / "eval.json").read_text()) == record["validation"]
    assert main(["train-base", "--task", "vqa", "--preset", "micro"]) == 2  # vqa needs --output


def test_vqa_collator_builds_decoder_inputs_and_masked_labels(cache):
    from hf_vltprune.data.processor import build_processor, dataset_corpus
    from hf_vltprune.embedded import VqaCollator, task_data

    data = task_data(get_preset("micro"))
    processor = build_processor(dataset_corpus(data["train"]), 32)
    batch = VqaCollator(processor)([data["train"][i] for i in range(4)])
    assert bool((batch["decoder_input_ids"][:, 0] == processor.tokenizer.bos_token_id).all())
    padding = batch["decoder_attention_mask"] == 0
    assert bool((batch["labels"][padding] == -100).all()) and bool((batch["labels"][~padding] >= 0).all())


def test_preset_scenes_line_objects_up_with_the_patches(cache):
    from hf_vltprune.embedded import task_data

    assert get_preset("tiny").scene_spec().grid == 8 and get_preset("small").scene_spec().grid == 14
    assert dataclasses.replace(get_preset("tiny"), aligned_objects=False).scene_spec().grid is None
    objects = [o for row in task_data(get_preset("micro"))["train"] for o in row["objects"]]
    assert all((4 * o["x"] - 0.5) % 1 == 0 for o in objects)  # micro: 4 x 4 patches; every object a cell's centre


def test_random_baseline_respects_budget_and_protects_cls():
    from hf_vltprune.reduce import LayerMetric, RandomDropReducer, TokenState

    state = TokenState(hidden=torch.randn(2, 17, 4))
    reducer = RandomDropReducer({0: 0.5}, hidden_size=4, num_layers=1, options={})
    keys = state.hidden[:, None]
    out = reducer(0, state, LayerMetric(keys, keys))
    assert out.num_tokens == 9 and torch.equal(out.hidden[:, 0], state.hidden[:, 0])


def test_discrimination_is_the_gap_to_random_at_quarter_keep():
    rows = [dict(method="unpruned", vision_keep=1.0, status="ok", itm_accuracy=80.0),
            dict(method="random", vision_keep=0.25, status="ok", itm_accuracy=70.5)]
    assert discrimination(rows) == 9.5
    assert discrimination(rows[:1]) is None


def test_cli_rejects_unknown_presets():
    with pytest.raises(SystemExit):
        main(["demo", "--preset", "huge"])
    with pytest.raises(ValueError, match="preset"):
        get_preset("huge")
    with pytest.raises(ValueError, match="grounding"):
        dataclasses.replace(get_preset("micro"), grounding=-1.0)


def test_metrics_on_hand_made_cases():
    import evaluate

    assert metrics.itm_accuracy([1, 0, 1, 1], [1, 1, 1, 0]) == 0.5
    similarity = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.1, 0.7], [0.0, 0.3, 0.8]])
    recall = metrics.retrieval_recall(similarity, ks=(1, 2))
    assert recall["image_to_text_recall@1"] == pytest.approx(2 / 3)  # image 1 prefers text 2
    assert recall["text_to_image_recall@1"] == pytest.approx(2 / 3)  # text 1 is closest to image 2
    assert recall["image_to_text_recall@2"] == pytest.approx(2 / 3)  # text 1 ranks third for image 1
    assert metrics.vqa_exact_match(["Red.", " two ", "yes"], ["red", "two", "no"]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="itm_accuracy"):
        metrics.itm_accuracy([1], [1, 0])
    difference, half_width = metrics.paired_accuracy_difference([1, 1, 0, 1], [1, 0, 0, 0])
    assert difference == pytest.approx(0.5)  # two examples gained, none lost
    assert half_width == pytest.approx(1.96 * (1 / 3) ** 0.5 / 2)  # z * std of the per-example differences / sqrt(n)
    assert metrics.paired_accuracy_difference([1, 0, 1], [1, 0, 1]) == (0.0, 0.0)
    with pytest.raises(ValueError, match="paired_accuracy_difference"):
        metrics.paired_accuracy_difference([1, 0], [1, 0, 1])
    with pytest.raises(ValueError, match="square"):
        metrics.retrieval_recall(torch.zeros(2, 3))
    module = evaluate.load(metrics.metric_path("vqa_exact_match"))
    assert module.compute(predictions=["Red."], references=["red"]) == {"vqa_exact_match": 1.0}
    module = evaluate.load(metrics.metric_path("itm_accuracy"))
    assert module.compute(predictions=[1, 0], references=[1, 1]) == {"itm_accuracy": 0.5}


def test_tiny_llava_trains_and_every_method_is_scored(cache, tmp_path):
    """The LLaVA quality benchmark end to end on `micro`: train (4 steps), then each method at one budget."""
    import runpy
    from pathlib import Path

    quality_llava = runpy.run_path(str(Path(__file__).resolve().parents[1] / "benchmarks" / "quality_llava.py"))
    quality_llava["main"](["--preset", "micro", "--budgets", "8", "--max-examples", "16", "--out", str(tmp_path)])
    # trained once, cached
    assert (cache / "models" / f"llava-vqa-micro-seed0-data{DATA_VERSION}" / "metrics.json").is_file()
    rows = json.loads((tmp_path / "quality_llava.json").read_text())["rows"]
    assert [(r["method"], r["visual_tokens"]) for r in rows] == [("unpruned", 16)] + [
        (m, 8) for m in ("visionzip", "textguided", "fastv", "pdrop", "tome", "random")]
    assert all(0.0 <= r["vqa_accuracy"] <= 100.0 for r in rows)
    unpruned = rows[0]["gflops"]
    assert all(r["gflops"] < unpruned for r in rows[1:])
    assert "| textguided | 8 |" in (tmp_path / "quality_llava.md").read_text()
