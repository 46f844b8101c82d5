"""Invariants of the model-agnostic token core (hf_vltprune.reduce)."""

import pytest
import torch
import torch.nn.functional as F

from hf_vltprune.attention import attend
from hf_vltprune.reduce import (
    Budget,
    CrossGETReducer,
    LayerMetric,
    TokenState,
    ToMeReducer,
    bipartite_soft_matching,
    compact,
    complete_graph_soft_matching,
    js_divergence,
    merge_tokens,
)


def random_state(batch=3, tokens=13, channels=8, padded=True, seed=0):
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(batch, tokens, channels, generator=generator)
    mask = None
    if padded:
        mask = torch.ones(batch, tokens, dtype=torch.bool)
        for row in range(batch):
            mask[row, tokens - 2 * row:] = False
    return TokenState(hidden=hidden, mask=mask)


def per_sample(r):
    """A budget taken through the general (per-sample, padded) path."""
    r = torch.as_tensor(r)
    return Budget(r, int(r.max()), False)


def eligible_of(state):
    return state.valid() & ~state.protected()


def matchings(state, r):
    metric = state.hidden
    importance = torch.randn(state.hidden.shape[:2])
    yield "bipartite", bipartite_soft_matching(metric, per_sample(r), eligible_of(state))
    yield "complete", complete_graph_soft_matching(metric, importance, per_sample(r), eligible_of(state))


@pytest.mark.parametrize("padded", [False, True])
def test_sources_and_destinations_are_disjoint_real_unprotected_tokens(padded):
    state = random_state(padded=padded)
    r = torch.tensor([4, 3, 2])
    for name, match in matchings(state, r):
        eligible = eligible_of(state)
        for b in range(state.batch_size):
            src = match.src[b][match.valid[b]].tolist()
            dst = match.dst[b][match.valid[b]].tolist()
            assert len(src) == r[b], name
            assert len(set(src)) == len(src), name
            assert not set(src) & set(dst), f"{name}: a token merged into a token that is itself merged away"
            assert all(s != d for s, d in zip(src, dst)), f"{name}: a token merged into itself"
            assert all(eligible[b, i] for i in src + dst), f"{name}: CLS, padding or a guide token was used"


def test_r_is_clipped_to_half_of_the_eligible_tokens():
    state = random_state(batch=1, tokens=9, padded=False)
    for name, match in matchings(state, torch.tensor([100])):
        assert int(match.valid.sum()) == 4, name  # 8 unprotected tokens


def test_sizes_sum_to_the_original_count_over_repeated_merges():
    state = random_state(padded=True)
    original = state.original_counts()
    r = torch.tensor([2, 2, 1])
    for step in range(3):
        state = merge_tokens(state, bipartite_soft_matching(state.hidden, per_sample(r), eligible_of(state)))
        assert torch.allclose(state.original_counts(), original)
        importance = torch.randn(state.hidden.shape[:2])
        matching = complete_graph_soft_matching(state.hidden, importance, per_sample(r), eligible_of(state))
        state = merge_tokens(state, matching)
        assert torch.allclose(state.original_counts(), original)
    assert bool((state.counts() < random_state(padded=True).counts()).all())


def test_a_merged_token_is_the_size_weighted_mean_of_its_sources():
    state = random_state(batch=1, tokens=11, padded=False)
    state = TokenState(hidden=state.hidden, size=torch.randint(1, 5, (1, 11)).float())
    match = bipartite_soft_matching(state.hidden, per_sample([4]), eligible_of(state))
    merged = merge_tokens(state, match)
    # Track where each surviving token went: compaction keeps the original order.
    removed = set(match.src[0].tolist())
    survivors = [i for i in range(11) if i not in removed]
    for position, token in enumerate(survivors):
        group = [token] + [s for s, d in zip(match.src[0].tolist(), match.dst[0].tolist()) if d == token]
        sizes = state.size[0, group]
        expected = (state.hidden[0, group] * sizes[:, None]).sum(0) / sizes.sum()
        assert torch.allclose(merged.hidden[0, position], expected, atol=1e-6)
        assert merged.size[0, position] == sizes.sum()
    # The size-weighted sum of features is preserved by a ToMe merge.
    total_before = (state.hidden * state.size[..., None]).sum(1)
    total_after = (merged.hidden * merged.size[..., None]).sum(1)
    assert torch.allclose(total_before, total_after, atol=1e-5)


@pytest.mark.parametrize("reducer_class", [ToMeReducer, CrossGETReducer])
def test_dense_fast_path_equals_the_per_sample_path(reducer_class):
    dense = random_state(batch=2, tokens=15, padded=False)
    assert dense.is_dense
    general = TokenState(hidden=dense.hidden, mask=torch.ones(2, 15, dtype=torch.bool))
    assert not general.is_dense
    reducer = reducer_class({0: 0.6, 1: 0.3}, hidden_size=8, num_layers=2, options={})
    outs = []
    for state in (dense, general):
        state = reducer.start(state)
        for layer in (0, 1):
            keys = state.hidden.view(2, -1, 2, 4).transpose(1, 2)
            state = reducer(layer, reducer.before_layer(layer, state), LayerMetric(queries=keys, keys=keys))
        outs.append(reducer.finish(state))
    assert outs[0].mask is None and outs[1].mask is None
    assert torch.allclose(outs[0].hidden, outs[1].hidden, atol=1e-6)
    assert torch.equal(outs[0].size, outs[1].size)
    assert outs[0].num_tokens == 1 + round(14 * 0.3)


def test_cls_is_never_merged_and_stays_first():
    state = random_state(padded=True)
    state.hidden[:, 0] = state.hidden[:, 1]  # CLS identical to a neighbour: the most tempting pair
    reducer = ToMeReducer({0: 0.5}, hidden_size=8, num_layers=1, options={})
    keys = state.hidden[:, None]
    out = reducer(0, state, LayerMetric(queries=keys, keys=keys))
    assert torch.equal(out.hidden[:, 0], state.hidden[:, 0])
    assert bool((out.sizes()[:, 0] == 1).all())


def test_crossget_merge_is_the_importance_weighted_combination():
    # Unit sizes and one source: the destination becomes w_src * x_src + w_dst * x_dst.
    state = random_state(batch=1, tokens=6, padded=False)
    importance = torch.randn(1, 6)
    match = complete_graph_soft_matching(state.hidden, importance, per_sample([1]), eligible_of(state))
    s, d = int(match.src[0, 0]), int(match.dst[0, 0])
    w = torch.stack([importance[0, s], importance[0, d]]).softmax(0)
    merged = merge_tokens(state, match, src_weight=2 * w[:1][None], dst_weight=2 * w[1:][None] - 1)
    position = [i for i in range(6) if i != s].index(d)
    expected = w[0] * state.hidden[0, s] + w[1] * state.hidden[0, d]
    assert torch.allclose(merged.hidden[0, position] * merged.size[0, position] / 2, expected, atol=1e-6)


def test_crossget_reducer_protects_and_drops_its_cross_token():
    state = random_state(batch=2, tokens=9, padded=False)
    reducer = CrossGETReducer({0: 0.5}, hidden_size=8, num_layers=1, options={})
    started = reducer.start(state)
    assert started.num_tokens == 10 and bool(started.guide[:, -1].all())
    keys = torch.randn(2, 2, 10, 4)
    out = reducer(0, reducer.before_layer(0, started), LayerMetric(queries=keys, keys=keys))
    assert int(out.guide.sum()) == 2  # the cross token survived the merge
    finished = reducer.finish(out)
    assert finished.guide is None and finished.num_tokens == out.num_tokens - 1
    assert torch.allclose(finished.original_counts(), torch.full((2,), 9.0))


def test_compaction_moves_real_tokens_first_in_order_and_cuts_the_batch():
    hidden = torch.arange(10.0).view(2, 5, 1)
    mask = torch.tensor([[1, 0, 1, 0, 1], [1, 1, 0, 0, 0]], dtype=torch.bool)
    out = compact(TokenState(hidden=hidden, mask=mask))
    assert out.num_tokens == 3
    assert out.hidden[0, :, 0].tolist() == [0.0, 2.0, 4.0]
    assert out.hidden[1, :2, 0].tolist() == [5.0, 6.0]
    assert out.mask.tolist() == [[True, True, True], [True, True, False]]
    assert compact(TokenState(hidden=hidden, mask=torch.ones(2, 5, dtype=torch.bool))).mask is None


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_proportional_attention_equals_attention_over_duplicated_tokens(implementation):
    generator = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, n, 4, generator=generator) for n in (3, 4, 4))
    sizes = torch.tensor([[1.0, 3.0, 2.0, 1.0]])
    state = TokenState(hidden=torch.zeros(1, 4, 8), size=sizes)
    out, _ = attend(q, k, v, state.attention_bias(torch.float32), implementation=implementation)
    repeat = sizes[0].long()
    k_dup, v_dup = k.repeat_interleave(repeat, dim=2), v.repeat_interleave(repeat, dim=2)
    expected = F.scaled_dot_product_attention(q, k_dup, v_dup)
    assert torch.allclose(out, expected, atol=1e-6)


def test_masked_keys_get_no_attention():
    q, k, v = torch.randn(1, 1, 2, 4), torch.randn(1, 1, 3, 4), torch.randn(1, 1, 3, 4)
    mask = torch.tensor([[True, True, False]])
    bias = TokenState(hidden=torch.zeros(1, 3, 4), mask=mask).attention_bias(torch.float32)
    out, _ = attend(q, k, v, bias)
    assert torch.allclose(out, F.scaled_dot_product_attention(q, k[:, :, :2], v[:, :, :2]), atol=1e-6)


def test_js_divergence_properties():
    a, b = torch.randn(4, 10), torch.randn(4, 10)
    assert js_divergence(a, b) > 0
    assert torch.allclose(js_divergence(a, b), js_divergence(b, a))
    assert js_divergence(a, a).abs() < 1e-6
