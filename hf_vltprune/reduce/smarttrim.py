"""SmartTrim: learned, per-sample token, attention-head and feed-forward-neuron trimming (Wang et al., 2024).

Only the paper's abstract could be read, so the trimmers are our design after it: small MLPs decide, per layer and
per sample, which tokens to drop (from each token, its modality's mean and the other modality's summary), which
self-attention heads to run and which groups of feed-forward neurons to run (both from the two summaries). Training
takes hard decisions with straight-through sigmoid (optionally Gumbel-sigmoid) gradients and masks dropped tokens out
of attention; inference keeps tokens, heads and neuron groups whose logit is positive, gathers the kept tokens to the
front and computes only the heads and neuron groups some sample of the batch runs. A cost loss drives the expected
compute of each layer to the keep schedule; `SelfDistillation` provides the self-distillation from the
full-capacity model and `KeepRatioScheduler` the curriculum.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import initialization as init

from .base import HeadMask, LayerMetric, TokenReducer
from .dynamic import fused_token, remove_dropped, straight_through
from .madtp import summary_attention_by_head
from .registry import register_reducer
from .state import TokenState


def gumbel_sigmoid(logits: torch.Tensor, temperature: float, noise: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """`(hard, soft)` keep decisions: `soft = sigmoid((logits + logistic noise) / T)`, `hard = soft > 0.5`."""
    if noise:
        uniform = torch.rand_like(logits).clamp(1e-6, 1 - 1e-6)
        logits = logits + uniform.log() - (-uniform).log1p()
    soft = torch.sigmoid(logits / temperature)
    return soft > 0.5, soft


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weight = mask.to(hidden.dtype)[..., None]
    return (hidden * weight).sum(dim=1) / weight.sum(dim=1).clamp_min(1)


def unit_fraction(mask: HeadMask | None, like: torch.Tensor) -> torch.Tensor:
    """`[B]`: the fraction of a layer's heads or neuron groups each sample runs (all when there is no mask)."""
    return mask.weight.mean(dim=1) if mask is not None else torch.ones_like(like)


def trimmer(in_features: int, width: int, out_features: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_features, width), nn.GELU(), nn.Linear(width, out_features))


@register_reducer("smarttrim")
class SmartTrimReducer(TokenReducer):
    """Learned per-sample token, head and feed-forward-neuron trimming with a compute-cost loss.

    Options:
        trim_heads: also trim self-attention heads.
        trim_neurons: also trim the feed-forward block, in `neuron_groups` groups of consecutive intermediate
            neurons (the feed-forward width must be a multiple of it).
        fuse_dropped: fuse each sample's dropped tokens into one token, their size-weighted mean (as MADTP and EViT
            do), instead of discarding them.
        trimmer_ratio: hidden width of the trimmer MLPs, as a fraction of the encoder width.
        initial_keep_logit: added to every keep logit, so an untrained trimmer keeps everything (the model starts
            as the unpruned one and learns to trim; with a positive `attention_prior`, while the warm-up's progress
            is 0).
        gumbel_temperature: temperature of the Gumbel-sigmoid in training.
        noise: draw Gumbel noise in training. Off (the default), training takes the decisions inference takes
            (keep where the logit is positive) with the sigmoid's straight-through gradient; on, it explores, but
            the noise lets the cost loss settle on logits near 0 that inference then keeps.
        cost_weight: weight of the loss `mean over layers of (expected cost - target keep)²`, the batch's mean
            cost against the layer's target (plus the per-sample term below).
        sample_cost_weight: weight, relative to that batch term, of the per-sample term `mean over samples of
            (cost - target keep)²`. The batch term alone lets the trimmers meet the budget on average while keeping
            almost everything in some samples and almost nothing in others (5% to 100% of the vision tokens on the
            embedded benchmark); this term narrows that spread and leaves room to adapt. 0 turns it off.
        attention_prior: initial weight of the attention prior: each token's keep logit gets `weight · log(N · a)`,
            `a` the attention the layer's [CLS] query pays the token (over the heads the sample runs, each weighted
            by its output's norm) and `N` the candidate tokens (0 for a token of average attention). The weight is
            learned per layer; 0 (the default) makes an untrained trimmer keep everything; 10 fine-tuned best on the
            embedded benchmark (against 3 and 20, with `prior_warmup`).
        prior_warmup: scale the attention prior by the keep-ratio warm-up's `progress` (0 at its start, 1 at its
            end and after training), so that an untrained trimmer keeps everything while the targets are near 1.0
            and the prior ranks tokens as strongly as the falling targets ask. Without it, a prior that already
            drops tokens at the start makes the cost loss push every keep logit up, and the trimmers may follow the
            falling targets late and all at once (on one of two embedded base models). Without `KeepRatioScheduler`
            (or with no warm-up) `progress` is 1 and the option changes nothing; a model saved or reloaded runs at 1.
        attention_share: the share of a token's per-layer compute that scales with the heads it runs (the
            attention projections: about 1/3 in a ViT or BERT layer); the rest scales with the neuron groups it runs
            (the MLP).
    """

    architectures = ("blip",)  # guided by a text encoder

    default_options = {"trim_heads": True, "trim_neurons": False, "neuron_groups": 8, "fuse_dropped": False,
                       "trimmer_ratio": 0.125, "initial_keep_logit": 3.0, "gumbel_temperature": 1.0, "noise": False,
                       "cost_weight": 2.0, "sample_cost_weight": 0.3, "attention_share": 1 / 3, "attention_prior": 0.0,
                       "prior_warmup": True}
    needs_training = True
    paper = ("Wang et al., SmartTrim: Adaptive Tokens and Attention Pruning for Efficient Vision-Language Models, "
             "LREC-COLING 2024")
    citation = """@inproceedings{wang2024smarttrim,
  title     = {{SmartTrim}: Adaptive Tokens and Attention Pruning for Efficient Vision-Language Models},
  author    = {Wang, Zekun and Liang, Jingchang and He, Ming and Li, Yuhao and Huang, Jiahao and Liu, Ting and
               Qin, Bing},
  booktitle = {Proceedings of the 2024 Joint International Conference on Computational Linguistics, Language
               Resources and Evaluation (LREC-COLING 2024)},
  year      = {2024}
}"""

    @classmethod
    def resolve_options(cls, options):
        options = super().resolve_options(options)
        ranges = {"trimmer_ratio": ("numbers > 0", lambda v: v > 0),
                  "gumbel_temperature": ("numbers > 0", lambda v: v > 0),
                  "cost_weight": ("numbers >= 0", lambda v: v >= 0),
                  "sample_cost_weight": ("numbers >= 0", lambda v: v >= 0),
                  "attention_prior": ("numbers >= 0", lambda v: v >= 0),
                  "attention_share": ("numbers in [0, 1]", lambda v: 0 <= v <= 1)}
        for name, (allowed, ok) in ranges.items():
            value = options[name]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok(value):
                raise ValueError(f"PruningConfig.method_options[{name!r}]={value!r} is invalid for method "
                                 f"'smarttrim': allowed {allowed}.")
        groups = options["neuron_groups"]
        if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
            raise ValueError(f"PruningConfig.method_options['neuron_groups']={groups!r} is invalid for method "
                             "'smarttrim': allowed integers >= 1 that divide the feed-forward width.")
        for name in ("trim_heads", "trim_neurons", "fuse_dropped", "noise", "prior_warmup"):
            if not isinstance(options[name], bool):
                raise ValueError(f"PruningConfig.method_options[{name!r}]={options[name]!r} is invalid for method "
                                 "'smarttrim': allowed True or False.")
        return options

    def __init__(self, schedule, hidden_size, num_layers, options, num_heads=1, guidance_size=0):
        super().__init__(schedule, hidden_size, num_layers, options, num_heads, guidance_size)
        width = max(8, int(hidden_size * options["trimmer_ratio"]))
        layers = [str(i) for i in sorted(schedule)]
        # One small trimmer per reducing layer: [token, mean of its modality, other modality] -> keep logit.
        self.token_trimmers = nn.ModuleDict({i: trimmer(2 * hidden_size + guidance_size, width, 1) for i in layers})
        # Why a prior: a fresh trimmer knows nothing about which tokens matter, and the straight-through gradient
        # of the cost loss pushes every logit down alike, so early drops are close to random. The attention the
        # summary token pays a token is a strong training-free ranking (EViT, FastV); its learned weight lets the
        # task and cost losses lean on it while the MLP learns the corrections.
        self.attention_prior = nn.Parameter(torch.full((len(layers),), float(options["attention_prior"])))
        self._prior_index = {int(i): n for n, i in enumerate(layers)}
        if options["trim_heads"]:
            self.head_trimmers = nn.ModuleDict({i: trimmer(hidden_size + guidance_size, width, num_heads)
                                                for i in layers})
        if options["trim_neurons"]:
            self.neuron_trimmers = nn.ModuleDict({i: trimmer(hidden_size + guidance_size, width,
                                                             options["neuron_groups"]) for i in layers})
        self._guidance: torch.Tensor | None = None
        self._originals: torch.Tensor | None = None
        self._head_masks: dict[int, HeadMask] = {}
        self._head_keep: dict[int, torch.Tensor] = {}  # [B, heads in the metric]: which of them each sample runs
        self._neuron_masks: dict[int, HeadMask] = {}
        self._cost_terms: list[torch.Tensor] = []

    def start(self, state: TokenState, guidance: torch.Tensor | None = None) -> TokenState:
        self._guidance = guidance
        self._originals = (state.valid() & ~state.protected()).sum(dim=1).clamp_min(1)
        self._head_masks, self._head_keep, self._neuron_masks = {}, {}, {}
        return state

    def _summary(self, state: TokenState) -> torch.Tensor:
        """`[B, C + G]`: the mean of this modality's real tokens and the other modality's summary (zeros if none)."""
        parts = [masked_mean(state.hidden, state.valid())]
        if self.guidance_size:
            guidance = self._guidance
            if guidance is None:
                guidance = state.hidden.new_zeros(state.batch_size, self.guidance_size)
            parts.append(guidance.to(state.hidden.dtype))
        return torch.cat(parts, dim=-1)

    def _decide(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`(hard, keep)`: boolean decisions and their keep values (straight-through in training)."""
        logits = logits.float() + self.options["initial_keep_logit"]
        if not self.training:
            hard = logits > 0
            return hard, hard.float()
        hard, soft = gumbel_sigmoid(logits, self.options["gumbel_temperature"], self.options["noise"])
        return hard, straight_through(hard, soft)

    def _unit_mask(self, unit_trimmer: nn.Module, state: TokenState) -> tuple[HeadMask, torch.Tensor]:
        """Per-sample heads or neuron groups from the summaries: the mask, and which computed units each sample
        runs (`[B, units computed]`: in inference only the units some sample runs are computed)."""
        hard, keep = self._decide(unit_trimmer(self._summary(state)))
        if self.training:
            return HeadMask(keep), hard
        active = hard.any(dim=0).nonzero().flatten()
        if active.numel() == 0:  # no sample runs any unit: compute one, whose output every sample zeroes
            active = torch.zeros(1, dtype=torch.long, device=hard.device)
        return HeadMask(keep, active), hard[:, active]

    def head_mask(self, layer_idx: int, state: TokenState) -> HeadMask | None:
        if not self.reduces_at(layer_idx):
            return None
        # Neuron groups are decided here too, from the same summaries, so the layer's cost term can count them.
        if self.options["trim_neurons"]:
            self._neuron_masks[layer_idx], _ = self._unit_mask(self.neuron_trimmers[str(layer_idx)], state)
        if not self.options["trim_heads"]:
            return None
        mask, runs = self._unit_mask(self.head_trimmers[str(layer_idx)], state)
        self._head_masks[layer_idx] = mask
        self._head_keep[layer_idx] = runs  # the metric holds only the computed heads
        return mask

    def neuron_mask(self, layer_idx: int) -> HeadMask | None:
        return self._neuron_masks.get(layer_idx)

    def forward(self, layer_idx: int, state: TokenState, metric: LayerMetric) -> TokenState:
        candidates = state.valid() & ~state.protected()
        summary = self._summary(state)[:, None, :].expand(-1, state.num_tokens, -1)
        logits = self.token_trimmers[str(layer_idx)](torch.cat([state.hidden, summary], dim=-1)).squeeze(-1)
        prior = self._attention_prior(state, metric, candidates, self._head_keep.get(layer_idx))
        weight = self.attention_prior[self._prior_index[layer_idx]]
        if self.options["prior_warmup"]:
            weight = weight * self.progress
        logits = logits + weight * prior
        hard, keep = self._decide(logits)
        keep = keep * candidates
        drop = candidates & ~hard
        fused = None
        if self.options["fuse_dropped"]:  # `1 - keep` is 1 on dropped tokens and carries their decisions' gradient
            fused = fused_token(state, drop, state.sizes() * (1 - keep) * candidates)
        if self.training:
            fused_count = fused[2][:, 0].to(keep.dtype) if fused is not None else 0
            token_fraction = (keep.sum(dim=1) + fused_count) / self._originals
            head_fraction = unit_fraction(self._head_masks.get(layer_idx), token_fraction)
            neuron_fraction = unit_fraction(self._neuron_masks.get(layer_idx), token_fraction)
            share = self.options["attention_share"]
            cost = token_fraction * (share * head_fraction + (1 - share) * neuron_fraction)  # [B]
            target = self.target_keep(layer_idx)
            sample_term = ((cost - target) ** 2).mean()
            self._cost_terms.append((cost.mean() - target) ** 2 + self.options["sample_cost_weight"] * sample_term)
        return remove_dropped(state, drop, keep, masked=self.training, appended=fused)

    def initialize_parameter(self, name: str, param: torch.Tensor) -> None:
        if name == "attention_prior":
            init.constant_(param, float(self.options["attention_prior"]))
        else:
            super().initialize_parameter(name, param)

    @staticmethod
    def _attention_prior(state: TokenState, metric: LayerMetric, candidates: torch.Tensor,
                         head_keep: torch.Tensor | None) -> torch.Tensor:
        """`[B, N]` `log(N · a)` for each of the `N` candidates (0 elsewhere): `a` the summary token's attention to
        the token, summed over the heads the sample runs (`head_keep`, `[B, H]`; all when `None`), each head weighted
        by how much it writes to the summary token (MADTP's `summary_attention`; the mean when the metric has no
        values). Training, which masks heads, and inference, which skips them, see the same prior."""
        # Recomputed without the size term even where the layer's eager probabilities are at hand (`metric.probs`),
        # so that eager and SDPA layers give the same prior.
        probs = summary_attention_by_head(metric._replace(probs=None),
                                          state.attention_bias(torch.float32, proportional=False))
        weight = probs.new_ones(probs.shape[:2]) if head_keep is None else head_keep.to(probs.dtype)
        if metric.values is None:  # the mean over the heads run (inference's metric holds only the computed heads)
            weight = weight / weight.sum(dim=1, keepdim=True).clamp_min(1)
        else:
            weight = weight * (probs[:, :, None] @ metric.values.float()).norm(dim=-1)[..., 0]
        attention = (probs * weight[..., None]).sum(dim=1)
        count = candidates.sum(dim=1, keepdim=True)
        prior = (attention * count).clamp_min(1e-4).log()
        return prior * candidates * (weight.sum(dim=1, keepdim=True) > 0)  # no head run: no attention to go by

    def losses(self) -> dict[str, torch.Tensor]:
        if not self._cost_terms or not self.options["cost_weight"]:
            return {}
        return {"smarttrim_cost_loss": self.options["cost_weight"] * torch.stack(self._cost_terms).mean()}

    def clear_losses(self) -> None:
        self._cost_terms = []
