"""The README's example and the `vltprune` command do what they say."""

import json
import runpy
from pathlib import Path

import pytest

from hf_vltprune.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_example_runs(capsys):
    runpy.run_path(str(ROOT / "examples" / "quickstart.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "reloaded: BlipPrunedForQuestionAnswering" in out


def test_cli_convert_writes_a_pruned_checkpoint(tmp_path):
    from transformers import BlipConfig, BlipForImageTextRetrieval

    from hf_vltprune import AutoPrunedModel

    from .conftest import tiny_blip_config

    BlipForImageTextRetrieval(BlipConfig(**tiny_blip_config())).save_pretrained(tmp_path / "stock")
    assert main(["convert", str(tmp_path / "stock"), str(tmp_path / "pruned"), "--method", "crossget",
                 "--vision-keep", "0.4"]) == 0
    model = AutoPrunedModel.from_pretrained(tmp_path / "pruned")
    assert type(model).__name__ == "BlipPrunedForImageTextRetrieval"
    assert model.pruning_config.vision_keep == 0.4


def test_cli_reports_bad_values_without_a_traceback(tmp_path, capsys):
    assert main(["demo", "--preset", "micro", "--budgets", "1.5", "--output", str(tmp_path)]) == 2
    assert "vision_keep" in capsys.readouterr().err
    assert main(["demo", "--preset", "micro", "--finetune-steps", "-1", "--output", str(tmp_path)]) == 2
    assert "finetune_steps" in capsys.readouterr().err


def test_cli_help_lists_the_subcommands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "demo" in out and "convert" in out


def test_finetune_example_trains_and_writes_a_card_with_numbers(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_VLTPRUNE_CACHE", str(tmp_path / "cache"))
    output = tmp_path / "finetuned"
    monkeypatch.setattr("sys.argv", ["finetune_pruned.py", "--preset", "micro", "--max-steps", "4",
                                     "--batch-size", "8", "--output", str(output), "--method", "madtp",
                                     "--method-options", '{"importance_mass": 0.95}'])
    runpy.run_path(str(ROOT / "examples" / "finetune_pruned.py"), run_name="__main__")
    assert "ITM accuracy: unpruned" in capsys.readouterr().out
    pruning = json.loads((output / "config.json").read_text())["pruning"]
    assert pruning["method"] == "madtp" and pruning["method_options"]["importance_mass"] == 0.95
    card = (output / "README.md").read_text()
    assert "| `itm_accuracy` |" in card and "| GFLOPs per sample |" in card
    assert (output / "tokenizer.json").is_file() or (output / "tokenizer_config.json").is_file()


def test_cli_convert_turns_a_stock_llava_into_a_pruned_one(tmp_path):
    from transformers import AutoModelForImageTextToText

    from .llava_setup import tiny_llava

    tiny_llava().save_pretrained(tmp_path / "stock")
    assert main(["convert", str(tmp_path / "stock"), str(tmp_path / "pruned"), "--method", "visionzip",
                 "--vision-tokens", "6", "--token-positions", "compact"]) == 0
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "pruned")
    assert type(model).__name__ == "LlavaPrunedForConditionalGeneration"
    assert model.config.pruning["vision_tokens"] == 6 and model.config.pruning["token_positions"] == "compact"


def test_llava_speed_benchmark_writes_its_table(tmp_path):
    speed_llava = runpy.run_path(str(ROOT / "benchmarks" / "speed_llava.py"))
    speed_llava["main"](["--shape", "tiny", "--budgets", "8", "--methods", "visionzip", "fastv", "--batch-sizes",
                         "2", "--repeats", "1", "--decode-tokens", "1", "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "speed_llava.json").read_text())["rows"]
    assert [(r["method"], r["visual_tokens"]) for r in rows] == [("stock", 64), ("ideal", 8), ("visionzip", 8),
                                                                 ("fastv", 8)]
    stock, ideal, visionzip, fastv = (r["gflops_per_sample"] for r in rows)
    assert ideal < stock and visionzip < stock and fastv < stock
    assert visionzip < fastv  # fastv runs its first layers on every visual token
    assert "| visionzip | 8 | 2 |" in (tmp_path / "speed_llava.md").read_text()


def test_llava_quickstart_example_runs(capsys):
    runpy.run_path(str(ROOT / "examples" / "llava_quickstart.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "reloaded: LlavaPrunedForConditionalGeneration visionzip 16" in out


def test_finetune_benchmark_compares_each_row_with_the_unpruned_one_pairwise(tmp_path, monkeypatch):
    from hf_vltprune.metrics import paired_accuracy_difference

    monkeypatch.setenv("HF_VLTPRUNE_CACHE", str(tmp_path / "cache"))
    finetune_blip = runpy.run_path(str(ROOT / "benchmarks" / "finetune_blip.py"))
    finetune_blip["main"](["--preset", "micro", "--methods", "tome", "--keeps", "0.5", "--steps", "2",
                           "--batch-size", "8", "--eval-splits", "validation", "test", "--out", str(tmp_path)])
    unpruned, tome = json.loads((tmp_path / "finetune.json").read_text())["rows"]
    assert len(tome["correct"]) == len(unpruned["correct"]) == 64  # micro: 32 validation + 32 test statements
    assert tome["itm_accuracy"] == pytest.approx(100 * tome["correct"].count("1") / 64, abs=0.01)
    difference, half_width = paired_accuracy_difference([int(c) for c in tome["correct"]],
                                                        [int(c) for c in unpruned["correct"]])
    assert tome["vs_unpruned"] == f"{100 * difference:+.1f} ± {100 * half_width:.1f}"
    assert unpruned["vs_unpruned"] == "+0.0 ± 0.0" and tome["gflops"] < unpruned["gflops"]
    assert "| tome | 0.5 |" in (tmp_path / "finetune.md").read_text()
    finetune_blip["main"](["--preset", "micro", "--methods", "random", "--keeps", "0.5", "--steps", "2",
                           "--batch-size", "8", "--eval-splits", "validation", "test", "--out", str(tmp_path)])
    reused, _ = json.loads((tmp_path / "finetune.json").read_text())["rows"]
    assert reused == unpruned and len(list(tmp_path.glob("unpruned-*.json"))) == 1  # fine-tuned once, then reused
    finetune_blip["main"](["--preset", "micro", "--methods", "random", "--keeps", "0.5", "--steps", "2",
                           "--batch-size", "8", "--eval-splits", "validation", "test", "--out", str(tmp_path),
                           "--warmup-steps", "1", "--distillation",
                           '{"alpha": 1, "hidden_weight": 1, "hidden_field": "question_embeds"}'])
    assert len(list(tmp_path.glob("unpruned-*.json"))) == 2  # another distillation recipe, another unpruned row
    finetune_blip["main"](["--preset", "micro", "--methods", "random", "--keeps", "0.5", "--steps", "2",
                           "--batch-size", "8", "--eval-splits", "validation", "test", "--out", str(tmp_path),
                           "--finetune-seed", "1"])
    reused, _ = json.loads((tmp_path / "finetune.json").read_text())["rows"]
    assert reused == unpruned and len(list(tmp_path.glob("unpruned-*.json"))) == 2  # repeats share the reference
