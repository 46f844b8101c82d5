"""The README's example and the `vltprune` command do what they say."""

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


def test_cli_help_lists_the_subcommands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "demo" in out and "convert" in out


def test_finetune_example_trains_and_writes_a_card_with_numbers(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_VLTPRUNE_CACHE", str(tmp_path / "cache"))
    output = tmp_path / "finetuned"
    monkeypatch.setattr("sys.argv", ["finetune_pruned.py", "--preset", "micro", "--max-steps", "4",
                                     "--batch-size", "8", "--output", str(output)])
    runpy.run_path(str(ROOT / "examples" / "finetune_pruned.py"), run_name="__main__")
    assert "ITM accuracy: unpruned" in capsys.readouterr().out
    card = (output / "README.md").read_text()
    assert "| `itm_accuracy` |" in card and "| GFLOPs per sample |" in card
    assert (output / "tokenizer.json").is_file() or (output / "tokenizer_config.json").is_file()
