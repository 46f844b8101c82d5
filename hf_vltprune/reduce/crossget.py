"""CrossGET: cross-guided ensemble of tokens with complete-graph soft matching (Shi et al., 2024)."""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from .base import LayerMetric, TokenReducer, dense_limit
from .matching import complete_graph_soft_matching, merge_tokens
from .registry import register_reducer
from .state import TokenState


@register_reducer("crossget")
class CrossGETReducer(TokenReducer):
    """Merges tokens the cross token finds unimportant and redundant, weighting each pair by importance.

    The cross token is a copy of the encoder's summary token (index 0: CLS for vision, [CLS]/[ENC] for BLIP's text
    encoder) appended at the end. At the top of layer i it is reset to `stopgrad(itself) + cross_embeddings[i]`;
    those learned, zero-initialised vectors are what training (with the cross-modal JS loss) turns into guidance.
    A token's importance is the cosine between its key and the cross token's query.
    """

    paper = ("Shi et al., CrossGET: Cross-Guided Ensemble of Tokens for Accelerating Vision-Language Transformers, "
             "ICML 2024")
    citation = """@inproceedings{shi2024crossget,
  title     = {{CrossGET}: Cross-Guided Ensemble of Tokens for Accelerating Vision-Language Transformers},
  author    = {Shi, Dachuan and Tao, Chaofan and Rao, Anyi and Yang, Zhendong and Yuan, Chun and Wang, Jiaqi},
  booktitle = {International Conference on Machine Learning},
  year      = {2024}
}"""

    def __init__(self, schedule, hidden_size, num_layers, options, **kwargs):
        super().__init__(schedule, hidden_size, num_layers, options, **kwargs)
        self.cross_embeddings = nn.Parameter(torch.zeros(num_layers, hidden_size))

    def start(self, state: TokenState, guidance: torch.Tensor | None = None) -> TokenState:
        batch, device = state.batch_size, state.hidden.device
        guide = torch.zeros(batch, state.num_tokens + 1, dtype=torch.bool, device=device)
        guide[:, -1] = True
        one = torch.ones(batch, 1, device=device)
        return replace(
            state,
            hidden=torch.cat([state.hidden, state.hidden[:, :1]], dim=1),
            size=torch.cat([state.size, one], dim=1) if state.size is not None else None,
            mask=torch.cat([state.mask, one.bool()], dim=1) if state.mask is not None else None,
            guide=guide,
            num_guides=state.num_guides + 1,
        )

    def before_layer(self, layer_idx: int, state: TokenState) -> TokenState:
        cross = self.cross_embeddings[layer_idx].to(state.hidden.dtype)
        if state.mask is None:  # dense batches keep the cross token last: touch only that row
            reset = state.hidden[:, -1:].detach() + cross
            return state.with_hidden(torch.cat([state.hidden[:, :-1], reset], dim=1))
        reset = state.hidden.detach() + cross
        return state.with_hidden(torch.where(state.guide[..., None], reset, state.hidden))

    def forward(self, layer_idx: int, state: TokenState, metric: LayerMetric) -> TokenState:
        budget = self.tokens_to_remove(layer_idx, state)
        if budget.width == 0:
            return state
        keys, queries = metric.keys.mean(dim=1), metric.queries.mean(dim=1)
        if state.mask is None:
            guide_query = queries[:, -1]  # dense batches keep the cross token last
        else:
            guide_query = queries[torch.arange(state.batch_size), state.guide.float().argmax(dim=1)]
        importance = F.cosine_similarity(keys.float(), guide_query.float()[:, None, :], dim=-1)

        eligible = state.valid() & ~state.protected()
        matching = complete_graph_soft_matching(keys, importance, budget, eligible, dense_limit(state))
        # Ensemble: each pair is weighted by a softmax over the two tokens' importance, scaled by 2 so that unit-size
        # tokens give the convex combination w_src * x_src + w_dst * x_dst.
        pair_importance = torch.stack([importance.gather(1, matching.src), importance.gather(1, matching.dst)], -1)
        weights = pair_importance.softmax(dim=-1)
        return merge_tokens(state, matching, src_weight=2 * weights[..., 0], dst_weight=2 * weights[..., 1] - 1)


def js_divergence(logits_a: torch.Tensor, logits_b: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence between the softmaxes of two logit tensors (mean over leading dims).

    CrossGET pulls the vision and text cross tokens together with this loss after reading both out through
    the final LayerNorm and projection with detached weights.
    """
    log_p, log_q = logits_a.log_softmax(dim=-1), logits_b.log_softmax(dim=-1)
    log_m = torch.logsumexp(torch.stack([log_p, log_q]), dim=0) - torch.log(torch.tensor(2.0, device=log_p.device))
    # As CrossGET writes it: 1/2 [KL(m || p) + KL(m || q)] (kl_div(input, target) is KL(target || input)).
    kl_mp = F.kl_div(log_p, log_m, log_target=True, reduction="none").sum(-1)
    kl_mq = F.kl_div(log_q, log_m, log_target=True, reduction="none").sum(-1)
    return (0.5 * (kl_mp + kl_mq)).mean()
