"""Keep 1.0 is the stock model: same outputs as the unmodified transformers classes, for every head."""

import pytest
import torch
from transformers import BlipConfig

from hf_vltprune import PruningConfig, get_pruned_model, pruning_disabled
from hf_vltprune.auto import PRUNED_ARCHITECTURES

from .conftest import make_inputs, tiny_blip_config
from .helpers import STOCK_HEADS, assert_same_outputs, head_outputs


@pytest.fixture(scope="module")
def stock_checkpoints(tmp_path_factory):
    """Each stock head saved once, with its reference outputs."""
    inputs = make_inputs()
    saved = {}
    for head in STOCK_HEADS:
        torch.manual_seed(0)
        model = head(BlipConfig(**tiny_blip_config())).eval()
        folder = tmp_path_factory.mktemp(head.__name__)
        model.save_pretrained(folder)
        saved[head] = (folder, head_outputs(model, inputs))
    return inputs, saved


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("method", ["tome", "crossget", "madtp", "smarttrim"])
@pytest.mark.parametrize("head", STOCK_HEADS, ids=lambda h: h.__name__)
def test_keep_one_reproduces_the_stock_head(stock_checkpoints, head, method, implementation):
    inputs, saved = stock_checkpoints
    folder, reference = saved[head]
    pruned_class = PRUNED_ARCHITECTURES[head.__name__.replace("Blip", "BlipPruned", 1)]
    model = pruned_class.from_pretrained(folder, pruning_config=PruningConfig(method=method),
                                         attn_implementation=implementation).eval()
    assert model.config._attn_implementation == implementation
    assert_same_outputs(head_outputs(model, inputs), reference)


@pytest.mark.parametrize("method", ["tome", "crossget", "madtp"])  # untrained SmartTrim keeps everything
@pytest.mark.parametrize("head", STOCK_HEADS, ids=lambda h: h.__name__)
def test_pruning_disabled_is_the_stock_head_and_is_undone_on_exit(stock_checkpoints, head, method):
    inputs, saved = stock_checkpoints
    folder, reference = saved[head]
    pruned_class = PRUNED_ARCHITECTURES[head.__name__.replace("Blip", "BlipPruned", 1)]
    config = PruningConfig(method=method, vision_keep=0.4, text_keep=0.6)
    model = pruned_class.from_pretrained(folder, pruning_config=config).eval()
    pruned = head_outputs(model, inputs)
    with pruning_disabled(model):
        assert_same_outputs(head_outputs(model, inputs), reference)
    assert_same_outputs(head_outputs(model, inputs), pruned)
    name = "itm" if "itm" in pruned else next(iter(pruned))
    assert not torch.equal(pruned[name], reference[name]), "keep < 1 must change the output"


@pytest.mark.parametrize("head", STOCK_HEADS, ids=lambda h: h.__name__)
def test_stock_checkpoint_loads_without_missing_stock_weights(stock_checkpoints, head):
    folder, _ = stock_checkpoints[1][head]
    pruned_class = PRUNED_ARCHITECTURES[head.__name__.replace("Blip", "BlipPruned", 1)]
    config = PruningConfig(method="crossget", vision_keep=0.5, text_keep=0.7)
    model, info = pruned_class.from_pretrained(folder, pruning_config=config, output_loading_info=True)
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    # Only the reducers' own parameters are new, and they start at zero (CrossGET's cross embeddings).
    assert info["missing_keys"], "crossget adds learnable cross embeddings"
    assert all(".reducer." in key for key in info["missing_keys"])
    for key in info["missing_keys"]:
        assert torch.count_nonzero(model.get_parameter(key)) == 0


def test_get_pruned_model_keeps_the_weights_and_outputs(stock_checkpoints):
    inputs, saved = stock_checkpoints
    head = STOCK_HEADS[1]
    stock = head.from_pretrained(saved[head][0]).eval()
    pruned = get_pruned_model(stock, PruningConfig(method="tome"))
    assert type(pruned).__name__ == "BlipPrunedForImageTextRetrieval"
    assert not pruned.training
    assert_same_outputs(head_outputs(pruned, inputs), saved[head][1])


def test_get_pruned_model_rejects_other_models():
    with pytest.raises(ValueError, match="get_pruned_model supports"):
        get_pruned_model(torch.nn.Linear(2, 2), PruningConfig())
