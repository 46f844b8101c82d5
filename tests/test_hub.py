"""Model cards and Hub upload, offline: `FakeHub` stands in for the Hub at the HfApi boundary."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from huggingface_hub import ModelCard
from transformers import AutoModelForVisualQuestionAnswering, AutoProcessor, BlipConfig, BlipForImageTextRetrieval

from hf_vltprune import (
    AutoPrunedModel,
    BlipPrunedForImageTextRetrieval,
    BlipPrunedForQuestionAnswering,
    PruningConfig,
    measure,
)
from hf_vltprune.cli import main
from hf_vltprune.data.processor import build_processor
from hf_vltprune.hub import CARD_START, PruningResults, measure_against_unpruned, model_card, push_to_hub

from .conftest import make_inputs, tiny_blip_config
from .fake_hub import FakeHub
from .helpers import assert_same_outputs, head_outputs

CORPUS = ["a small red circle left of a big blue square", "is there a green triangle", "two yellow stars"] * 5


@pytest.fixture
def hub(tmp_path, monkeypatch):
    return FakeHub(tmp_path / "hub").install(monkeypatch)


def pruned_model(head=BlipPrunedForImageTextRetrieval, method="tome"):
    config = BlipConfig(**tiny_blip_config()).to_dict()
    config.pop("model_type")
    pruning = PruningConfig(method=method, vision_keep=0.5, text_keep=0.7)
    return head(head.config_class(**config, pruning=pruning.to_dict())).eval()


def results(accuracy=0.75) -> PruningResults:
    return PruningResults(unpruned={"gflops": 2.0, "latency_ms": 10.0, "itm_accuracy": 0.8},
                          pruned={"gflops": 0.9, "latency_ms": 5.0, "itm_accuracy": accuracy},
                          setup={"device": "cpu", "batch_size": 8, "dataset": "synthetic", "split": "validation"})


@pytest.mark.parametrize("head, auto_class", [(BlipPrunedForImageTextRetrieval, AutoPrunedModel),
                                              (BlipPrunedForQuestionAnswering, AutoModelForVisualQuestionAnswering)])
def test_push_then_load_back_through_the_auto_classes_gives_identical_outputs(hub, head, auto_class):
    model = pruned_model(head, method="crossget")
    with torch.no_grad():  # learned parameters must travel too
        model.vision_model.encoder.reducer.cross_embeddings.normal_()
    processor = build_processor(CORPUS, image_size=32, vocab_size=60)
    url = model.push_to_hub("me/blip-crossget", processor=processor, pruning_results=results())
    assert url.startswith("https://huggingface.co/me/blip-crossget/commit/")
    assert hub.commits == [("me/blip-crossget", "Upload pruned model with hf-vltprune")]

    loaded = auto_class.from_pretrained("me/blip-crossget", cache_dir=hub.cache_dir).eval()
    assert type(loaded) is head and loaded.pruning_config == model.pruning_config
    inputs = make_inputs()
    assert_same_outputs(head_outputs(loaded, inputs), head_outputs(model, inputs), atol=0)
    reloaded_processor = AutoProcessor.from_pretrained("me/blip-crossget", cache_dir=hub.cache_dir)
    assert reloaded_processor.tokenizer(CORPUS[0]).input_ids == processor.tokenizer(CORPUS[0]).input_ids


def test_card_metadata_parses_and_states_the_measured_numbers(hub):
    model = pruned_model()
    model.config.base_model_name_or_path = "Salesforce/blip-itm-base-coco"
    model.push_to_hub("me/blip-tome", pruning_results=results())
    card = ModelCard.load(hub.repo_path("me/blip-tome") / "README.md")
    assert hub.validated, "the card's metadata is validated before upload"
    data = card.data
    assert data.library_name == "hf-vltprune" and data.base_model == "Salesforce/blip-itm-base-coco"
    assert {"hf-vltprune", "token-pruning", "tome"} <= set(data.tags)
    assert data.pipeline_tag == "zero-shot-image-classification"
    [accuracy] = data.eval_results
    assert (accuracy.metric_name, accuracy.metric_value, accuracy.dataset_split) == ("itm_accuracy", 0.75,
                                                                                   "validation")
    assert "| GFLOPs per sample | 2 | 0.9 | -55.0% |" in card.text
    assert "| latency (ms per batch of 8) | 10.00 | 5.00 | 2.00x faster |" in card.text
    assert "| `itm_accuracy` | 80.0% | 75.0% | -5.0 points |" in card.text
    assert "| vision tokens kept | 50%, reduced in layers 0, 1, 2 |" in card.text
    assert 'AutoPrunedModel.from_pretrained("me/blip-tome")' in card.text
    assert "@inproceedings{bolya2023tome" in card.text


def test_pushing_twice_updates_the_card_instead_of_duplicating_it(hub, tmp_path):
    folder = tmp_path / "checkpoint"
    pruned_model().save_pretrained(folder, pruning_results=results(0.75))
    assert main(["push", str(folder), "me/blip-tome"]) == 0
    readme = hub.repo_path("me/blip-tome") / "README.md"
    # The owner edits the card on the Hub: a licence and a paragraph of their own.
    readme.write_text(readme.read_text().replace("library_name:", "license: mit\nlibrary_name:", 1)
                      + "\nTrained by me, for fun.\n")
    new_results = tmp_path / "new.json"
    new_results.write_text(json.dumps({"unpruned": {"itm_accuracy": 0.8}, "pruned": {"itm_accuracy": 0.78},
                                       "setup": {"dataset": "synthetic", "split": "validation"}}))
    assert main(["push", str(folder), "me/blip-tome", "--results", str(new_results)]) == 0

    card = ModelCard.load(readme)
    assert len(hub.commits) == 2 and card.text.count(CARD_START) == 1
    assert "Trained by me, for fun." in card.text and card.data.license == "mit"
    assert len(card.data.tags) == len(set(card.data.tags))
    [accuracy] = card.data.eval_results
    assert accuracy.metric_value == 0.78
    assert "| `itm_accuracy` | 80.0% | 78.0% | -2.0 points |" in card.text
    assert "| GFLOPs per sample | 2 | 0.9 |" in card.text  # earlier numbers not re-measured stay


def test_save_pretrained_writes_a_card_without_numbers_until_they_are_known(tmp_path):
    pruned_model().save_pretrained(tmp_path / "a", pruning_results=results())
    pruned_model().save_pretrained(tmp_path / "a")  # new weights: the old numbers no longer hold
    card = ModelCard.load(tmp_path / "a" / "README.md")
    assert "Not measured yet" in card.text and card.data.eval_results is None
    assert not (tmp_path / "a" / "pruning_results.json").exists()


def test_measure_against_unpruned_reports_the_stock_cost_and_calls_evaluate_both_ways():
    model = pruned_model()
    inputs = make_inputs()
    seen = []

    def evaluate(candidate):
        seen.append(candidate.vision_model.encoder.reducer.enabled)
        return {"itm_accuracy": 0.5 + 0.1 * len(seen)}

    measured = measure_against_unpruned(model, inputs, evaluate=evaluate, latency_repeats=1, setup={"split": "x"})
    assert seen == [True, False]  # pruned first, then with pruning switched off (and back on afterwards)
    assert model.vision_model.encoder.reducer.enabled
    stock = BlipForImageTextRetrieval(BlipConfig(**tiny_blip_config())).eval()
    assert measured.unpruned["gflops"] == pytest.approx(measure(stock, inputs, latency_repeats=0).gflops, rel=1e-6)
    assert measured.pruned["gflops"] < measured.unpruned["gflops"]
    assert measured.setup["batch_size"] == 3 and measured.setup["split"] == "x"


@pytest.mark.parametrize("bad, field", [({"unpruned": {"gflops": "fast"}, "pruned": {}}, "unpruned"),
                                        ({"unpruned": {}, "pruned": {"gflops": float("nan")}}, "pruned"),
                                        ({"pruned": {}}, "needs the keys")])
def test_bad_results_raise_value_errors_naming_the_field(bad, field):
    with pytest.raises(ValueError, match=field):
        PruningResults.from_dict(bad)


def test_push_rejects_folders_that_are_not_checkpoints(hub, tmp_path, capsys):
    with pytest.raises(ValueError, match="not a saved checkpoint"):
        push_to_hub(tmp_path, "me/nothing")
    assert main(["push", str(tmp_path), "me/nothing"]) == 2
    assert "not a saved checkpoint" in capsys.readouterr().err
    assert not hub.commits


def test_card_of_each_head_names_its_auto_class_and_task():
    vqa = model_card(pruned_model(BlipPrunedForQuestionAnswering), repo_id="me/vqa")
    assert vqa.data.pipeline_tag == "visual-question-answering"
    assert "from transformers import AutoModelForVisualQuestionAnswering" in vqa.text


def test_without_the_plugin_loading_says_to_install_it(tmp_path):
    checkpoint = tmp_path / "checkpoint"
    pruned_model().save_pretrained(checkpoint)
    script = textwrap.dedent(f"""
        import sys
        sys.modules["hf_vltprune"] = None  # the plugin is not installed
        from transformers import AutoModel
        for trust in (False, True):
            try:
                AutoModel.from_pretrained({str(checkpoint)!r}, trust_remote_code=trust)
            except (ImportError, ValueError) as error:
                print(type(error).__name__, str(error).replace(chr(10), " "))
    """)
    env_vars = {"HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1", "PATH": ""}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env_vars, timeout=120)
    first, second = out.stdout.strip().splitlines()
    assert first.startswith("ValueError") and "trust_remote_code=True" in first
    assert second.startswith("ImportError") and "pip install hf-vltprune" in second
    # Installed but not imported: trust_remote_code=True runs the loader module, which imports the plugin.
    script = f"from transformers import AutoModel; print(type(AutoModel.from_pretrained({str(checkpoint)!r}, " \
             "trust_remote_code=True)).__name__)"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env_vars, timeout=120)
    assert out.stdout.strip() == "BlipPrunedModel", out.stderr[-2000:]
