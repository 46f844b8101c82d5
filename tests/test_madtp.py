"""MADTP: per-sample dynamic pruning with masks in training and compaction at inference."""

import pytest
import torch

from hf_vltprune import AutoPrunedModel, PruningConfig
from hf_vltprune.measure import count_tokens, measure, sample_inputs
from hf_vltprune.reduce import pruning_losses

from .conftest import make_inputs
from .training_setup import minimise_pruning_losses, tiny_retrieval_model

# The paper's threshold and ours (`importance_mass`).
THRESHOLDS = pytest.mark.parametrize("options", [{}, {"importance_mass": 0.8}], ids=["prototypes", "mass"])


def retrieval(vision_keep=0.5, text_keep=0.6, options=None):
    return tiny_retrieval_model(method="madtp", vision_keep=vision_keep, text_keep=text_keep, method_options=options)


def scores(model, inputs):
    return model(**inputs).itm_score


@THRESHOLDS
def test_masked_training_forward_and_compacted_inference_agree_on_tokens_and_outputs(options):
    model, inputs = retrieval(options=options), make_inputs(batch=4, length=9)
    model.eval()
    with torch.no_grad():
        compacted, compacted_tokens = scores(model, inputs), count_tokens(model, inputs)
    model.train()  # no dropout in this config: only the reducers' path differs
    with torch.no_grad():
        masked, masked_tokens = scores(model, inputs), count_tokens(model, inputs)
    pruning_losses(model)
    assert masked_tokens == compacted_tokens
    assert compacted_tokens["vision_model"][-1] < compacted_tokens["vision_model"][0]  # it does prune
    assert compacted_tokens["text_encoder"][-1] < compacted_tokens["text_encoder"][0]
    assert torch.allclose(masked, compacted, atol=1e-5)


@THRESHOLDS
def test_decisions_are_per_sample_and_a_sample_alone_matches_the_padded_batch(options):
    model, inputs = retrieval(options=options).eval(), make_inputs(batch=3, length=9)
    counts = []
    model.vision_model.encoder.layers[1].register_forward_pre_hook(
        lambda _, args, kwargs: counts.append(kwargs["state"].counts().tolist()), with_kwargs=True)
    with torch.no_grad():
        together = scores(model, inputs)
        for row in range(3):
            alone = scores(model, {k: v[row:row + 1, :int(inputs["attention_mask"][row].sum())]
                                   if k != "pixel_values" else v[row:row + 1] for k, v in inputs.items()})
            assert torch.allclose(alone, together[row:row + 1], atol=1e-5)
    if not options:  # untrained, the importance of random patches is too even for the mass threshold to differ
        assert len(set(counts[0])) > 1, f"different images should keep different numbers of tokens: {counts[0]}"


@THRESHOLDS
def test_gradients_reach_every_learned_part_and_prototypes_are_shared(options):
    model = retrieval(options=options).train()
    vision, text = model.vision_model.encoder.reducer, model.text_encoder.encoder.reducer
    assert text.shared_prototypes() is vision.prototypes and not hasattr(text, "prototypes")
    out = model(**make_inputs())
    losses = pruning_losses(model)
    assert set(losses) == {"madtp_ratio_loss", "madtp_alignment_loss"}
    (out.itm_score.sum() + sum(losses.values())).backward()
    for name, parameter in model.named_parameters():
        if ".reducer." in name:
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    assert pruning_losses(model) == {}, "losses are forgotten once read"


@pytest.mark.parametrize("options", [{}, {"importance_mass": 0.99}], ids=["prototypes", "mass"])  # 0.99: keeps all
def test_the_ratio_loss_moves_the_realised_keep_to_the_target(options):
    torch.manual_seed(0)
    model = retrieval(vision_keep=0.5, text_keep=1.0, options=options)
    inputs = make_inputs(batch=16, length=9, pad_last=False)
    target = 1 + 0.5 * 64  # CLS + half the patches after the last layer; one layer earlier: 1 + 64 * 2 / 3
    history = minimise_pruning_losses(model, inputs, model.vision_model.encoder.reducer.parameters(), lr=1e-2)
    model.eval()
    tokens = count_tokens(model, inputs)["vision_model"]
    assert min(history[-10:]) < history[0] / 10  # hard decisions make it jump a little from step to step
    assert abs(tokens[-1] - (1 + 64 * 2 / 3)) < 8 and tokens[-1] > 0.5 * target


def test_save_and_reload_keeps_the_learned_parts_and_outputs(tmp_path):
    model = retrieval().eval()
    with torch.no_grad():
        model.vision_model.encoder.reducer.log_temperature.fill_(0.7)
        model.vision_model.encoder.reducer.prototypes.normal_()
    model.save_pretrained(tmp_path)
    loaded = AutoPrunedModel.from_pretrained(tmp_path).eval()
    inputs = make_inputs()
    assert torch.equal(scores(loaded, inputs), scores(model, inputs))
    assert loaded.text_encoder.encoder.reducer.shared_prototypes() is loaded.vision_model.encoder.reducer.prototypes


@pytest.mark.parametrize("options, name", [({"num_prototypes": 0}, "num_prototypes"),
                                           ({"temperature": -1.0}, "temperature"),
                                           ({"sharpness": 0}, "sharpness"),
                                           ({"ratio_weight": -2}, "ratio_weight"),
                                           ({"importance_mass": 0}, "importance_mass"),
                                           ({"importance_mass": 1.5}, "importance_mass"),
                                           ({"importance_mass": True}, "importance_mass"),
                                           ({"importance_mass": "0.9"}, "importance_mass"),
                                           ({"threshold": 1}, "unknown option")])
def test_bad_options_raise_value_errors(options, name):
    with pytest.raises(ValueError, match=name):
        PruningConfig(method="madtp", vision_keep=0.5, method_options=options)



def test_realised_cost_is_reported_per_sample():
    model, inputs = retrieval().eval(), make_inputs(batch=3, length=9)
    measured = measure(model, inputs, latency_repeats=0, per_sample=True)
    assert len(measured.gflops_per_sample) == 3 and len(measured.keep_per_sample["vision_model"]) == 3
    assert all(0 < keep < 1 for keep in measured.keep_per_sample["vision_model"])
    for row, gflops in enumerate(measured.gflops_per_sample):  # each sample's cost is its cost alone
        assert gflops == pytest.approx(measure(model, sample_inputs(inputs, row), latency_repeats=0).gflops)
    # Per-instance decisions: the images do not all cost the same.
    assert len({round(g, 9) for g in measured.gflops_per_sample}) > 1


def test_the_alignment_features_are_computed_only_for_the_training_loss():
    model, inputs = retrieval(), make_inputs(batch=2, length=9)
    reducers = (model.vision_model.encoder.reducer, model.text_encoder.encoder.reducer)
    with torch.no_grad():
        model.eval()(**inputs)
        assert all(reducer._features is None for reducer in reducers)  # inference does not pay for them
        model.train()(**inputs)
        assert all(reducer._features is not None for reducer in reducers)
        assert "madtp_alignment_loss" in pruning_losses(model)


def test_the_attention_importance_reads_the_layers_probabilities_instead_of_recomputing_them(monkeypatch):
    from hf_vltprune.reduce.madtp import MADTPReducer

    model, inputs = retrieval().eval(), make_inputs(batch=3, length=9)
    with torch.no_grad():
        reused, reused_cost = scores(model, inputs), measure(model, inputs, latency_repeats=0)
        monkeypatch.setattr(MADTPReducer, "reads_attention", False)  # SDPA layers: MADTP recomputes the scores
        recomputed, recomputed_cost = scores(model, inputs), measure(model, inputs, latency_repeats=0)
    assert torch.allclose(reused, recomputed, atol=1e-5)  # the same importance, so the same tokens and outputs
    assert reused_cost.tokens_per_layer == recomputed_cost.tokens_per_layer
    assert reused_cost.gflops < recomputed_cost.gflops


def test_the_mass_threshold_leaves_below_it_less_than_the_rest_of_the_mass():
    from hf_vltprune.reduce.madtp import mass_threshold

    importance = torch.tensor([[0.0, 0.4, 0.05, 0.3, 0.1, 0.15],    # token 0: the protected summary token
                               [0.0, 0.2, 0.2, 0.2, 0.2, 0.2]])
    candidates = torch.tensor([[False, True, True, True, True, True], [False, True, True, True, True, False]])
    importance = importance * candidates / (importance * candidates).sum(dim=1, keepdim=True)
    threshold = mass_threshold(importance, candidates, 0.8)
    # Sample 0: 0.4 + 0.3 = 0.7 < 0.8, + 0.15 reaches it: threshold 0.15, below it 0.1 + 0.05 < 0.2.
    # Sample 1: four candidates of 0.25: three make 0.75 < 0.8, the fourth reaches it: threshold 0.25.
    assert torch.allclose(threshold, torch.tensor([0.15, 0.25]))
    for mass in (0.5, 0.9, 0.99, 1.0):
        threshold = mass_threshold(importance, candidates, mass)
        below = (importance * candidates * (importance < threshold[:, None])).sum(dim=1)
        assert (below < 1 - mass + 1e-6).all(), mass
