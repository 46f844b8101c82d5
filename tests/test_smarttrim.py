"""SmartTrim: learned per-sample token, head and feed-forward-neuron trimming."""

import pytest
import torch
from transformers import BlipConfig, BlipForImageTextRetrieval

from hf_vltprune import BlipPrunedForImageTextRetrieval, PruningConfig, pruning_disabled
from hf_vltprune.measure import count_tokens, measure
from hf_vltprune.reduce import LayerMetric, TokenState, pruning_losses
from hf_vltprune.reduce.madtp import summary_attention
from hf_vltprune.reduce.smarttrim import SmartTrimReducer

from .conftest import make_inputs, tiny_blip_config
from .training_setup import minimise_pruning_losses, tiny_retrieval_model


def trimming_model(**options):
    """A tiny retrieval model whose untrained trimmers already drop tokens, heads and neuron groups (no +3 keep
    offset)."""
    model = tiny_retrieval_model(method="smarttrim", vision_keep=0.5, text_keep=0.6,
                                 method_options={"trim_neurons": True, "neuron_groups": 4})
    for reducer in (model.vision_model.encoder.reducer, model.text_encoder.encoder.reducer):
        reducer.options.update({"initial_keep_logit": 0.0, "noise": False, **options})
        with torch.no_grad():
            for name, parameter in reducer.named_parameters():
                parameter.normal_(std=0.5 if name.endswith("weight") else 0.1)
    return model


def test_untrained_trimmers_keep_everything_so_fine_tuning_starts_from_the_unpruned_model():
    model = tiny_retrieval_model(method="smarttrim", vision_keep=0.3, text_keep=0.5,
                                 method_options={"trim_neurons": True}).eval()
    inputs = make_inputs()
    with torch.no_grad():
        trimmed = model(**inputs).itm_score
        with pruning_disabled(model):
            full = model(**inputs).itm_score
    assert torch.equal(trimmed, full)


@pytest.mark.parametrize("fuse_dropped", [False, True])
def test_masked_training_and_compacted_inference_agree_on_tokens_heads_neurons_and_outputs(fuse_dropped):
    model, inputs = trimming_model(fuse_dropped=fuse_dropped), make_inputs(batch=4, length=9)
    heads, neurons = [], []
    model.vision_model.encoder.layers[1].self_attn.register_forward_pre_hook(
        lambda _, args, kwargs: heads.append(kwargs["head_mask"]), with_kwargs=True)
    reducer = model.vision_model.encoder.reducer
    original_neuron_mask = reducer.neuron_mask
    reducer.neuron_mask = lambda layer_idx: neurons.append(original_neuron_mask(layer_idx)) or neurons[-1]
    model.eval()
    with torch.no_grad():
        compacted, compacted_tokens = model(**inputs).itm_score, count_tokens(model, inputs)
    model.train()  # no dropout and no Gumbel noise: only the masked-vs-gathered paths differ
    with torch.no_grad():
        masked, masked_tokens = model(**inputs).itm_score, count_tokens(model, inputs)
    pruning_losses(model)
    assert masked_tokens == compacted_tokens
    assert compacted_tokens["vision_model"][-1] < compacted_tokens["vision_model"][0]
    inference_heads, training_heads = heads[0], heads[2]
    assert torch.allclose(inference_heads.weight, training_heads.weight, atol=1e-6)  # straight-through: 1 + s - s
    assert inference_heads.active.numel() < model.config.vision_config.num_attention_heads or \
        not bool(inference_heads.weight.all()), "some heads are skipped"
    layers = len(model.vision_model.encoder.layers)
    inference_neurons, training_neurons = neurons[1], neurons[layers + 1]  # layer 1 of each pass
    assert torch.allclose(inference_neurons.weight, training_neurons.weight, atol=1e-6)
    assert not bool(inference_neurons.weight.all()), "some neuron groups are skipped"
    assert torch.allclose(masked, compacted, atol=1e-5)


def test_heads_no_sample_runs_are_not_computed():
    model, inputs = trimming_model(trim_heads=True), make_inputs(batch=1, length=9)
    model.eval()
    with torch.no_grad():
        for reducer in (model.vision_model.encoder.reducer, model.text_encoder.encoder.reducer):
            reducer.options["initial_keep_logit"] = 50.0  # every token stays ...
            for trimmer in reducer.head_trimmers.values():
                trimmer[2].bias[: trimmer[2].bias.numel() // 2] = -100.0  # ... half of the heads do not
        half_heads = measure(model, inputs, latency_repeats=0).gflops
        for reducer in (model.vision_model.encoder.reducer, model.text_encoder.encoder.reducer):
            reducer.options["trim_heads"] = False
        all_heads = measure(model, inputs, latency_repeats=0).gflops
    assert half_heads < 0.95 * all_heads


def test_neuron_groups_no_sample_runs_are_not_computed_and_the_others_match_a_masked_feed_forward():
    from hf_vltprune.models.blip.layers_blip_pruned import feed_forward
    from hf_vltprune.reduce import HeadMask

    model, inputs = trimming_model(trim_heads=False), make_inputs(batch=1, length=9)
    model.eval()
    with torch.no_grad():
        for reducer in (model.vision_model.encoder.reducer, model.text_encoder.encoder.reducer):
            reducer.options["initial_keep_logit"] = 50.0  # every token and head stays ...
            for trimmer in reducer.neuron_trimmers.values():
                trimmer[2].bias[:2] = -100.0  # ... two of the four neuron groups do not
        half_neurons = measure(model, inputs, latency_repeats=0).gflops
        for reducer in (model.vision_model.encoder.reducer, model.text_encoder.encoder.reducer):
            reducer.options["trim_neurons"] = False
        all_neurons = measure(model, inputs, latency_repeats=0).gflops
    assert half_neurons < 0.9 * all_neurons  # here the MLPs are half of each reducing layer's projections

    # One sample runs groups {0, 2}, the other {2}: computing only groups 0 and 2 equals zeroing the rest.
    mlp, hidden = model.vision_model.encoder.layers[0].mlp, torch.randn(2, 5, 32)
    runs = torch.tensor([[1.0, 0, 1, 0], [0, 0, 1, 0]])
    sliced = feed_forward(hidden, mlp.fc1, mlp.activation_fn, mlp.fc2, HeadMask(runs, torch.tensor([0, 2])))
    zeroed = mlp.fc2(mlp.activation_fn(mlp.fc1(hidden)) * runs.repeat_interleave(16, dim=1)[:, None])
    assert torch.allclose(sliced, zeroed, atol=1e-6)


def test_the_task_loss_reaches_the_trimmers():
    model = trimming_model().train()
    model(**make_inputs()).itm_score.sum().backward()
    reducer = model.vision_model.encoder.reducer
    for trimmers in (reducer.token_trimmers, reducer.head_trimmers, reducer.neuron_trimmers):
        assert trimmers["0"][2].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("fuse_dropped", [False, True])
def test_a_sample_alone_matches_the_padded_batch(fuse_dropped):
    model, inputs = trimming_model(fuse_dropped=fuse_dropped).eval(), make_inputs(batch=3, length=9)
    with torch.no_grad():
        together = model(**inputs).itm_score
        for row in range(3):
            length = int(inputs["attention_mask"][row].sum())
            alone = {k: v[row:row + 1, :length] if k != "pixel_values" else v[row:row + 1] for k, v in inputs.items()}
            assert torch.allclose(model(**alone).itm_score, together[row:row + 1], atol=1e-5)


def test_gradients_reach_every_trimmer_and_the_cost_loss_moves_compute_to_the_target():
    torch.manual_seed(0)
    model = tiny_retrieval_model(method="smarttrim", vision_keep=0.5, text_keep=1.0,
                                 method_options={"trim_neurons": True})
    inputs = make_inputs(batch=16, length=9, pad_last=False)
    model.train()
    model(**inputs)
    sum(pruning_losses(model).values()).backward()
    for name, parameter in model.vision_model.encoder.reducer.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name

    history = minimise_pruning_losses(model, inputs, model.vision_model.encoder.reducer.parameters(), lr=3e-2)
    assert history[-1] < history[0] / 4
    model.eval()
    trimmed = measure(model, inputs, latency_repeats=0)
    with pruning_disabled(model):
        full = measure(model, inputs, latency_repeats=0)
    assert trimmed.gflops_vision < 0.92 * full.gflops_vision  # trims once the cost loss asks for it


def test_the_attention_prior_starts_at_its_option_also_when_a_stock_checkpoint_is_converted(tmp_path):
    BlipForImageTextRetrieval(BlipConfig(**tiny_blip_config())).save_pretrained(tmp_path)
    pruning = PruningConfig(method="smarttrim", vision_keep=0.5, method_options={"attention_prior": 2.5})
    converted = BlipPrunedForImageTextRetrieval.from_pretrained(tmp_path, pruning_config=pruning)
    built = tiny_retrieval_model(method="smarttrim", method_options={"attention_prior": 2.5})
    for model in (converted, built):
        prior = model.vision_model.encoder.reducer.attention_prior
        assert torch.equal(prior, torch.full_like(prior, 2.5))


def kept_by_the_prior(progress=1.0, **options):
    """`(kept, attention)`: which of 11 candidates per sample a reducer whose MLP says nothing keeps (only the
    prior with weight 2 and the +3 offset decide), and the summary token's attention to them."""
    torch.manual_seed(0)
    options = SmartTrimReducer.resolve_options({"trim_heads": False, "attention_prior": 2.0, **options})
    reducer = SmartTrimReducer({0: 0.5}, hidden_size=16, num_layers=1, options=options, num_heads=2).eval()
    reducer.progress = progress
    with torch.no_grad():
        reducer.token_trimmers["0"][2].weight.zero_()
        reducer.token_trimmers["0"][2].bias.zero_()
    hidden = torch.randn(3, 12, 16)
    hidden[..., 0] = torch.arange(12.0)  # each token carries its index, to see which survive
    metric = LayerMetric(queries=3 * torch.randn(3, 2, 12, 8), keys=torch.randn(3, 2, 12, 8),
                         values=0.3 * torch.randn(3, 2, 12, 8))
    with torch.no_grad():
        out = reducer(0, reducer.start(TokenState(hidden=hidden)), metric)
    kept = torch.zeros(3, 11, dtype=torch.bool)
    for row in range(3):
        kept[row, out.hidden[row, 1:, 0][out.valid()[row, 1:]].long() - 1] = True
    return kept, summary_attention(metric, None)[:, 1:]


def test_the_attention_prior_drops_the_tokens_the_summary_token_attends_to_least():
    kept, attention = kept_by_the_prior()
    assert torch.equal(kept, 2.0 * (attention * 11).log() + 3.0 > 0)  # keep where weight * log(N a) + offset > 0
    for row in range(3):
        assert 0 < kept[row].sum() < 11
        assert attention[row][kept[row]].min() > attention[row][~kept[row]].max()


@pytest.mark.parametrize("prior_warmup", [True, False])
def test_the_attention_prior_grows_with_the_keep_ratio_warm_up(prior_warmup):
    kept, attention = kept_by_the_prior(progress=0.3, prior_warmup=prior_warmup)
    weight = 2.0 * 0.3 if prior_warmup else 2.0
    assert torch.equal(kept, weight * (attention * 11).log() + 3.0 > 0)
    after_the_warm_up = kept_by_the_prior(progress=1.0, prior_warmup=prior_warmup)[0]
    if prior_warmup:
        assert kept.sum() > after_the_warm_up.sum()  # the weaker prior drops fewer tokens
        assert bool(kept_by_the_prior(progress=0.0)[0].all())  # at the start an untrained trimmer keeps them all
    else:
        assert torch.equal(kept, after_the_warm_up)


def test_with_a_positive_prior_untrained_trimmers_keep_everything_at_the_warm_ups_start_and_reload_at_its_end(
        tmp_path):
    from hf_vltprune import AutoPrunedModel
    from hf_vltprune.training import set_pruning_progress

    model = tiny_retrieval_model(method="smarttrim", vision_keep=0.3, method_options={"attention_prior": 10.0})
    inputs = make_inputs(batch=4, length=9)
    model.train()
    set_pruning_progress(model, 0.0)  # what KeepRatioScheduler does before the first step
    at_the_start = count_tokens(model, inputs)["vision_model"]
    set_pruning_progress(model, 1.0)
    after_the_warm_up = count_tokens(model, inputs)["vision_model"]
    assert at_the_start == [65.0] * len(at_the_start)
    assert after_the_warm_up[-1] < 65.0  # the prior alone already drops the least-attended patches

    model.eval()
    with torch.no_grad():
        expected = model(**inputs).itm_score
    set_pruning_progress(model, 0.0)  # saved mid-warm-up ...
    model.save_pretrained(tmp_path)
    loaded = AutoPrunedModel.from_pretrained(tmp_path).eval()
    assert loaded.vision_model.encoder.reducer.progress == 1.0  # ... a reloaded model runs at its targets
    with torch.no_grad():
        assert torch.equal(loaded(**inputs).itm_score, expected)


def test_fuse_dropped_appends_the_size_weighted_mean_of_the_dropped_tokens():
    torch.manual_seed(0)
    options = SmartTrimReducer.resolve_options({"trim_heads": False, "attention_prior": 2.0, "fuse_dropped": True})
    reducer = SmartTrimReducer({0: 0.5}, hidden_size=16, num_layers=1, options=options, num_heads=2).eval()
    with torch.no_grad():  # the prior decides which tokens go
        reducer.token_trimmers["0"][2].weight.zero_()
        reducer.token_trimmers["0"][2].bias.zero_()
    hidden = torch.randn(3, 12, 16)
    metric = LayerMetric(queries=3 * torch.randn(3, 2, 12, 8), keys=torch.randn(3, 2, 12, 8),
                         values=0.3 * torch.randn(3, 2, 12, 8))
    sizes = torch.randint(1, 4, (3, 12)).float()
    state = reducer.start(TokenState(hidden=hidden, size=sizes))
    with torch.no_grad():
        out = reducer(0, state, metric)
    for row in range(3):
        valid = out.valid()[row]
        assert torch.equal(out.sizes()[row][valid].sum(), sizes[row].sum())  # nothing lost: sizes add up
        kept = valid.sum() - 1  # the last valid token is the fused one
        dropped = [i for i in range(1, 12) if not any(torch.equal(hidden[row, i], h) for h in out.hidden[row, :kept])]
        assert 0 < len(dropped) < 11
        weight = sizes[row, dropped] / sizes[row, dropped].sum()
        assert torch.allclose(out.hidden[row, kept], weight @ hidden[row, dropped], atol=1e-6)
        assert out.sizes()[row, kept] == sizes[row, dropped].sum()


@pytest.mark.parametrize("sample_cost_weight", [0.0, 0.5])
def test_the_cost_loss_adds_each_samples_squared_distance_to_the_target_to_the_batch_term(sample_cost_weight):
    torch.manual_seed(0)
    options = SmartTrimReducer.resolve_options({"trim_heads": False, "initial_keep_logit": 0.0, "cost_weight": 2.0,
                                                "sample_cost_weight": sample_cost_weight})
    reducer = SmartTrimReducer({0: 0.5}, hidden_size=16, num_layers=1, options=options, num_heads=2).train()
    with torch.no_grad():  # a trimmer with opinions: it keeps different shares of different samples
        reducer.token_trimmers["0"][2].weight.normal_(std=2.0)
    hidden = torch.randn(4, 12, 16)
    metric = LayerMetric(queries=torch.randn(4, 2, 12, 8), keys=torch.randn(4, 2, 12, 8))
    out = reducer(0, reducer.start(TokenState(hidden=hidden)), metric)
    kept = out.valid()[:, 1:].sum(dim=1).float() / 11  # the [CLS] token is protected: 11 candidates
    assert kept.min() < kept.max()  # the samples differ, so the per-sample term is not the batch term
    expected = 2.0 * ((kept.mean() - 0.5) ** 2 + sample_cost_weight * ((kept - 0.5) ** 2).mean())
    assert torch.allclose(reducer.losses()["smarttrim_cost_loss"], expected)


@pytest.mark.parametrize("options, name", [({"trimmer_ratio": 0}, "trimmer_ratio"),
                                           ({"attention_prior": -1.0}, "attention_prior"),
                                           ({"sample_cost_weight": -0.1}, "sample_cost_weight"),
                                           ({"gumbel_temperature": -1}, "gumbel_temperature"),
                                           ({"attention_share": 1.5}, "attention_share"),
                                           ({"trim_heads": "yes"}, "trim_heads"),
                                           ({"trim_neurons": 1}, "trim_neurons"),
                                           ({"fuse_dropped": "no"}, "fuse_dropped"),
                                           ({"prior_warmup": 1}, "prior_warmup"),
                                           ({"neuron_groups": 0}, "neuron_groups"),
                                           ({"heads": 2}, "unknown option")])
def test_bad_options_raise_value_errors(options, name):
    with pytest.raises(ValueError, match=name):
        PruningConfig(method="smarttrim", vision_keep=0.5, method_options=options)


def test_neuron_trimmers_are_saved_and_reload_to_the_same_decisions_and_outputs(tmp_path):
    from hf_vltprune import AutoPrunedModel

    options = {"trim_neurons": True, "neuron_groups": 4, "initial_keep_logit": 0.0}
    model = tiny_retrieval_model(method="smarttrim", vision_keep=0.5, text_keep=0.6, method_options=options).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "neuron_trimmers" in name:
                parameter.normal_(std=0.5)
    inputs = make_inputs(batch=3, length=9)
    with torch.no_grad():
        expected = model(**inputs).itm_score
    model.save_pretrained(tmp_path)
    loaded = AutoPrunedModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(loaded(**inputs).itm_score, expected)
    assert torch.equal(loaded.vision_model.encoder.reducer.neuron_trimmers["0"][2].weight,
                       model.vision_model.encoder.reducer.neuron_trimmers["0"][2].weight)


def test_neuron_groups_that_do_not_divide_the_feed_forward_width_raise_a_value_error():
    with pytest.raises(ValueError, match="neuron_groups.*feed-forward width 64"):
        tiny_retrieval_model(method="smarttrim", method_options={"trim_neurons": True, "neuron_groups": 5})


def test_the_attention_prior_reads_only_the_heads_a_sample_runs():
    torch.manual_seed(0)
    state, candidates = TokenState(hidden=torch.randn(2, 6, 8)), torch.ones(2, 6, dtype=torch.bool)
    candidates[:, 0] = False
    q, k, v = torch.randn(2, 3, 6, 4), torch.randn(2, 3, 6, 4), torch.randn(2, 3, 6, 4)
    runs = torch.tensor([[True, False, True], [False, True, False]])
    for values in (v, None):  # training's metric has every head and masks them; inference's only the run ones
        all_heads = SmartTrimReducer._attention_prior(state, LayerMetric(q, k, values), candidates, runs)
        for row in range(2):
            heads = runs[row].nonzero().flatten()
            only_run = LayerMetric(q[row:row + 1, heads], k[row:row + 1, heads],
                                   None if values is None else values[row:row + 1, heads])
            alone = SmartTrimReducer._attention_prior(state, only_run, candidates[row:row + 1],
                                                      torch.ones(1, len(heads), dtype=torch.bool))
            assert torch.allclose(all_heads[row], alone[0], atol=1e-6)
