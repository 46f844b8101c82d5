"""Model cards that state what pruning gained, and sharing pruned checkpoints on the Hub.

A pruned checkpoint folder holds, next to `config.json` and the weights:
- `README.md`: the model card (metadata for the Hub, what was pruned, cost and accuracy before and after, how to
  load it, the method's citation), rendered from `model_cards/pruned_model_card.md`;
- `pruning_results.json`: the measured numbers the card states (`PruningResults`), when they are known;
- `hf_vltprune_loader.py`: a few lines that `config.json`'s `auto_map` points at, so that loading the checkpoint
  with `trust_remote_code=True` where the plugin is missing stops with "pip install hf-vltprune" (with the plugin
  installed, transformers uses the registered classes and never runs it).
"""

from __future__ import annotations

import datetime
import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any, Callable

import torch
from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData
from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError
from huggingface_hub.utils import HFValidationError, validate_repo_id

from .measure import batch_size_of, measure
from .reduce import get_reducer_class, pruning_disabled

RESULTS_FILE = "pruning_results.json"
CARD_FILE = "README.md"
LOADER_MODULE = "hf_vltprune_loader"
# Our part of a card lies between these markers: a push replaces it and keeps what the owner wrote around it.
CARD_START, CARD_END = "<!-- hf-vltprune:start -->", "<!-- hf-vltprune:end -->"
LIBRARY_TAGS = ["hf-vltprune", "token-pruning"]
COST_KEYS = ("gflops", "latency_ms")


@dataclass
class PruningResults:
    """What pruning gained, measured the same way on the unpruned model (pruning switched off) and the pruned one.

    Attributes:
        unpruned: name -> value for the model with pruning switched off: `gflops` (per sample), `latency_ms` (one
            forward of the measured batch) and metrics, e.g. `itm_accuracy` (fractions in [0, 1]).
        pruned: the same names for the pruned model.
        setup: how it was measured: `device`, `batch_size`, `dtype`, `date`, `dataset`, `split`, ...
    """

    unpruned: dict[str, float]
    pruned: dict[str, float]
    setup: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        for name in ("unpruned", "pruned"):
            values = getattr(self, name)
            if not isinstance(values, dict):
                raise ValueError(f"PruningResults.{name} must be a dict of name -> number, "
                                 f"got {type(values).__name__}.")
            for key, value in values.items():
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                    raise ValueError(f"PruningResults.{name}[{key!r}] must be a finite number, got {value!r}.")
            setattr(self, name, {key: float(value) for key, value in values.items()})

    def merged(self, newer: PruningResults) -> PruningResults:
        """These results updated with `newer` (its values win), e.g. accuracy added to a speed measurement."""
        return PruningResults({**self.unpruned, **newer.unpruned}, {**self.pruned, **newer.pruned},
                              {**self.setup, **newer.setup})

    def save(self, folder: str | os.PathLike) -> None:
        Path(folder, RESULTS_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def from_dict(cls, values: dict) -> PruningResults:
        unknown = sorted(set(values) - {"unpruned", "pruned", "setup"})
        if unknown or not {"unpruned", "pruned"} <= set(values):
            raise ValueError(f"PruningResults needs the keys 'unpruned' and 'pruned' (and optionally 'setup'), got "
                             f"{sorted(values)}.")
        return cls(**values)

    @classmethod
    def load(cls, folder: str | os.PathLike) -> PruningResults | None:
        """The results saved in a checkpoint folder, or `None` if it has none."""
        path = Path(folder, RESULTS_FILE)
        return cls.from_dict(json.loads(path.read_text())) if path.is_file() else None


def measure_against_unpruned(model, inputs: dict, evaluate: Callable[[Any], dict[str, float]] | None = None,
                             latency_repeats: int = 10, setup: dict | None = None) -> PruningResults:
    """GFLOPs, latency and (with `evaluate`) accuracy of `model` with and without its pruning.

    Args:
        model: a pruned model.
        inputs: one batch of keyword inputs on the model's device, for GFLOPs and latency (see `measure`).
        evaluate: called with the model, returns metrics (name -> value); run once pruned, once unpruned.
        latency_repeats: timed forward passes (0: no latency).
        setup: extra facts for the card (e.g. `{"dataset": ..., "split": ...}`).
    """
    parameter = next(model.parameters())
    pruned = _measured(model, inputs, evaluate, latency_repeats)
    with pruning_disabled(model):
        unpruned = _measured(model, inputs, evaluate, latency_repeats)
    facts = {
        "device": torch.cuda.get_device_name(parameter.device) if parameter.device.type == "cuda" else "cpu",
        "batch_size": batch_size_of(inputs),
        "dtype": str(parameter.dtype).removeprefix("torch."),
        "torch": torch.__version__,
        "date": datetime.date.today().isoformat(),
    }
    return PruningResults(unpruned, pruned, {**facts, **(setup or {})})


def _measured(model, inputs, evaluate, latency_repeats) -> dict[str, float]:
    cost = measure(model, inputs, latency_repeats=latency_repeats)
    values = {"gflops": cost.gflops}
    if cost.latency_ms is not None:
        values["latency_ms"] = cost.latency_ms
    return {**values, **(evaluate(model) if evaluate is not None else {})}


# ----------------------------------------------------------------------------------------------------- the card


def model_card(model_or_config, results: PruningResults | None = None, model_name: str | None = None,
               repo_id: str | None = None) -> ModelCard:
    """The model card of a pruned checkpoint: Hub metadata plus what was pruned, what it gained, how to load it.

    Args:
        model_or_config: a pruned model, or the config of a saved one (its `architectures` name the class).
        results: measured numbers; the card says "not measured yet" without them.
        model_name: the card's title (default: the repository name, or "Pruned <architecture>").
        repo_id: where the checkpoint lives on the Hub, for the loading snippet.
    """
    from .auto import loading_class  # auto imports the models, which import this module: import it late

    config = getattr(model_or_config, "config", model_or_config)
    if config is model_or_config:
        architecture = (config.architectures or [type(config).__name__.replace("Config", "Model")])[0]
    else:
        architecture = type(model_or_config).__name__
    pruning = config.pruning_config
    reducer = get_reducer_class(pruning.method)
    auto_module, auto_class, pipeline_tag = loading_class(architecture)
    model_name = model_name or (repo_id.split("/")[-1] if repo_id else f"Pruned {architecture}")
    base_model = config.base_model_name_or_path
    card_data = ModelCardData(
        base_model=base_model if _is_hub_id(base_model) else None,
        library_name="hf-vltprune",
        pipeline_tag=pipeline_tag,
        tags=[*LIBRARY_TAGS, pruning.method, type(config).model_type],
        model_name=model_name,
        eval_results=_eval_results(results, pipeline_tag) or None,
    )
    return ModelCard.from_template(
        card_data,
        template_str=files("hf_vltprune.model_cards").joinpath("pruned_model_card.md").read_text(),
        model_name=model_name,
        summary=_summary(architecture, pruning, reducer, base_model),
        pruning_rows=_pruning_rows(pruning, reducer, config),
        result_rows=_result_rows(results) if results else [],
        setup=_setup_line(results.setup) if results else "",
        auto_module=auto_module,
        auto_class=auto_class,
        load_id=repo_id or "path/to/this/checkpoint",
        model_type=type(config).model_type,
        stock_class=architecture.replace("Pruned", "", 1),
        paper=reducer.paper,
        citation=reducer.citation,
    )


def _is_hub_id(name: str | None) -> bool:
    if not name or os.path.exists(name):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _summary(architecture, pruning, reducer, base_model) -> str:
    source = f"[`{base_model}`](https://huggingface.co/{base_model})" if _is_hub_id(base_model) else (
        f"`{base_model}`" if base_model else "a stock checkpoint")
    kept = [f"{name} tokens to {keep:.0%}" for name, keep in (("vision", pruning.vision_keep),
                                                               ("text", pruning.text_keep)) if keep < 1.0]
    what = " and ".join(kept) if kept else "nothing (keep 1.0: the stock computation)"
    method = f"**{pruning.method}**" + (f" ({reducer.paper})" if reducer.paper else "")
    return (f"A token-pruned `{architecture}` made from {source} with "
            f"[hf-vltprune](https://pypi.org/project/hf-vltprune/): {method} reduces {what}. "
            "The pruning runs inside the model's forward pass; weights and processor are those of the base model "
            "plus the method's own parameters, if any.")


def _pruning_rows(pruning, reducer, config) -> list[tuple[str, str]]:
    rows = [("method", f"`{pruning.method}`" + (f": {reducer.paper}" if reducer.paper else ""))]
    per_image = getattr(config, "tokens_per_image", None)  # LLaVA
    for modality in ("vision", "text") if per_image is None else ("vision",):
        keep = getattr(pruning, f"{modality}_keep")
        kept = f"{keep:.0%}" + (f" ({round(keep * per_image)} of {per_image} per image)" if per_image else "")
        rows.append((f"{modality} tokens kept", kept + _where(pruning, reducer, config, modality)))
    rows.append(("proportional attention", "yes" if pruning.proportional_attention else "no"))
    if pruning.method_options:
        rows.append(("method options", ", ".join(f"`{k}={v}`" for k, v in sorted(pruning.method_options.items()))))
    return rows


def _where(pruning, reducer, config, modality: str) -> str:
    """Where the tokens are removed, for the card's table."""
    if getattr(pruning, f"{modality}_keep") == 1.0:
        return ""
    if reducer.location == "before_language_model":
        return ", between the vision tower and the language model"
    sub_config = config.text_config if reducer.location == "language_model" else getattr(config, f"{modality}_config")
    depth = sub_config.num_hidden_layers
    if reducer.location == "encoder" and modality == "vision":
        depth = getattr(config, "vision_layers_run", depth)  # LLaVA runs its tower only as deep as it reads it
    layers = ", ".join(map(str, pruning.reducing_layers(modality, depth)))
    return f", dropped at language-model layers {layers}" if reducer.location == "language_model" else \
        f", reduced in layers {layers}"


def _result_rows(results: PruningResults) -> list[tuple[str, str, str, str]]:
    names = [key for key in COST_KEYS if key in results.pruned]
    names += sorted(key for key in results.pruned if key not in COST_KEYS)
    rows = []
    for name in names:
        before, after = results.unpruned.get(name), results.pruned[name]
        if name == "gflops":
            rows.append(("GFLOPs per sample", f"{before:.3g}", f"{after:.3g}", f"{after / before - 1:+.1%}"))
        elif name == "latency_ms":
            batch = results.setup.get("batch_size", "?")
            speedup = before / after
            change = f"{speedup:.2f}x faster" if speedup >= 1 else f"{1 / speedup:.2f}x slower"
            rows.append((f"latency (ms per batch of {batch})", f"{before:.2f}", f"{after:.2f}", change))
        else:
            change = f"{(after - before) * 100:+.1f} points" if before is not None else ""
            rows.append((f"`{name}`", f"{before:.1%}" if before is not None else "", f"{after:.1%}", change))
    return rows


def _setup_line(setup: dict) -> str:
    return "Measured with " + ", ".join(f"{key}: {value}" for key, value in setup.items()) + "." if setup else ""


def _eval_results(results: PruningResults | None, task: str | None) -> list[EvalResult]:
    if results is None:
        return []
    dataset = str(results.setup.get("dataset", "unknown"))
    return [
        EvalResult(task_type=task or "other", dataset_type=dataset, dataset_name=dataset,
                   dataset_split=results.setup.get("split"), metric_type=_metric_type(name), metric_name=name,
                   metric_value=round(value, 6))
        for name, value in sorted(results.pruned.items()) if name not in COST_KEYS
    ]


def _metric_type(name: str) -> str:
    for kind in ("accuracy", "recall", "exact_match"):
        if kind in name:
            return kind
    return name


def merge_cards(new: ModelCard, existing: ModelCard | None) -> ModelCard:
    """`new` written over `existing`: our section and metadata are replaced, what the owner wrote around it stays.

    Tags are united; evaluation results for the same task, dataset, split and metric are replaced, not repeated.
    """
    if existing is None:
        return new
    metadata = {k: v for k, v in existing.data.to_dict().items() if k != "model-index"}
    metadata.update({k: v for k, v in new.data.to_dict().items() if k != "model-index"})
    data = ModelCardData(**metadata)
    data.tags = list(dict.fromkeys([*(existing.data.tags or []), *(new.data.tags or [])]))
    data.model_name = new.data.model_name or existing.data.model_name
    results = {_result_key(result): result for result in (existing.data.eval_results or [])}
    results.update({_result_key(result): result for result in (new.data.eval_results or [])})
    data.eval_results = list(results.values()) or None
    old_text, new_text = existing.text, new.text
    start, end = old_text.find(CARD_START), old_text.find(CARD_END)
    if start != -1 and end > start:
        ours = new_text[new_text.index(CARD_START):new_text.index(CARD_END) + len(CARD_END)]
        new_text = old_text[:start] + ours + old_text[end + len(CARD_END):]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{new_text.lstrip()}")


def _result_key(result: EvalResult) -> tuple:
    return (result.task_type, result.dataset_type, result.dataset_name, result.dataset_split, result.metric_type,
            result.metric_name)


# ----------------------------------------------------------------------------------------------- folders & Hub


def write_model_card(folder: str | os.PathLike, config=None, results: PruningResults | None = None,
                     repo_id: str | None = None) -> ModelCard:
    """Write `README.md` (and, with `results`, `pruning_results.json`) into a saved pruned checkpoint.

    Without `results` the folder's saved results are used, if any. Without `config` it is read from the folder. A
    card already in the folder is updated (`merge_cards`): text its owner added outside our section stays.
    """
    if config is None:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(folder)
    if results is not None:
        results.save(folder)
    else:
        results = PruningResults.load(folder)
    card_path = Path(folder, CARD_FILE)
    existing = ModelCard.load(card_path) if card_path.is_file() else None
    model_name = repo_id.split("/")[-1] if repo_id else Path(folder).resolve().name
    card = merge_cards(model_card(config, results, model_name=model_name, repo_id=repo_id), existing)
    card.save(card_path)
    return card


def attach_results(folder: str | os.PathLike, results: PruningResults) -> ModelCard:
    """Add measured numbers to a saved checkpoint: merged into its `pruning_results.json`, stated in its card."""
    saved = PruningResults.load(folder)
    return write_model_card(folder, results=saved.merged(results) if saved else results)


def write_loader_code(folder: str | os.PathLike, config) -> None:
    """Point `config.json`'s `auto_map` at a tiny module that loads the plugin's classes or says to install it."""
    from .auto import auto_map_entries

    entries = auto_map_entries(type(config))
    names = sorted(set(entries.values()))
    Path(folder, f"{LOADER_MODULE}.py").write_text(
        '"""Loads this checkpoint\'s classes from hf-vltprune (https://pypi.org/project/hf-vltprune/)."""\n\n'
        "try:\n"
        f"    from hf_vltprune import {', '.join(names)}  # noqa: F401\n"
        "except ImportError as error:\n"
        "    raise ImportError(\n"
        '        "This checkpoint was pruned with hf-vltprune, which is not installed. "\n'
        '        "Run `pip install hf-vltprune`, then `import hf_vltprune` and load it without trust_remote_code."\n'
        "    ) from error\n"
    )
    config_path = Path(folder, "config.json")
    saved = json.loads(config_path.read_text())
    saved["auto_map"] = {auto: f"{LOADER_MODULE}.{name}" for auto, name in entries.items()}
    config_path.write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")


def push_to_hub(model_or_folder, repo_id: str, processor=None, results: PruningResults | None = None, *,
                commit_message: str | None = None, private: bool | None = None, token: str | bool | None = None,
                revision: str | None = None, create_pr: bool = False, api: HfApi | None = None) -> str:
    """Upload a pruned checkpoint (a model, or a folder it was saved to) with its processor and model card.

    Uses `huggingface_hub.HfApi` (no git). An existing card on the Hub is updated (`merge_cards`), not replaced
    wholesale or duplicated.

    Returns:
        The URL of the commit.
    """
    api = api or HfApi(token=token)
    with tempfile.TemporaryDirectory() as staging:
        if isinstance(model_or_folder, (str, os.PathLike)):
            folder = Path(model_or_folder)
            if not Path(folder, "config.json").is_file():
                raise ValueError(f"push_to_hub: {os.fspath(folder)!r} is not a saved checkpoint (no config.json).")
            if processor is not None:
                raise ValueError("push_to_hub: pass `processor` only with a model; a folder is uploaded as it is.")
            if results is not None:
                attach_results(folder, results)
        else:
            folder = Path(staging)
            model_or_folder.save_pretrained(folder, pruning_results=results)
            if processor is not None:
                processor.save_pretrained(folder)
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        card = merge_cards(write_model_card(folder, repo_id=repo_id), _existing_card(repo_id, token))
        card.validate()
        card.save(Path(folder, CARD_FILE))
        commit = api.upload_folder(repo_id=repo_id, folder_path=folder, revision=revision, create_pr=create_pr,
                                   commit_message=commit_message or "Upload pruned model with hf-vltprune")
    return commit.commit_url


def _existing_card(repo_id: str, token) -> ModelCard | None:
    try:
        return ModelCard.load(repo_id, token=token)
    except (EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError):
        return None


class PrunedModelHubMixin:
    """For pruned model classes: `save_pretrained` also writes the model card and the loader module, and
    `push_to_hub` uploads model, processor and card through `hf_vltprune.hub.push_to_hub`."""

    def save_pretrained(self, save_directory, *args, pruning_results: PruningResults | None = None, **kwargs):
        """Save as transformers does, then write the model card (stating `pruning_results` when given).

        New weights make the folder's earlier card and results stale, so both are rewritten. With
        `push_to_hub=True` the folder is then uploaded to `repo_id` (default: the folder's name).
        """
        push, repo_id, token = kwargs.pop("push_to_hub", False), kwargs.pop("repo_id", None), kwargs.get("token")
        super().save_pretrained(save_directory, *args, **kwargs)
        if not kwargs.get("is_main_process", True):
            return
        for stale in (CARD_FILE, RESULTS_FILE):
            Path(save_directory, stale).unlink(missing_ok=True)
        write_loader_code(save_directory, self.config)
        write_model_card(save_directory, self.config, pruning_results)
        if push:
            push_to_hub(save_directory, repo_id or Path(save_directory).name, token=token)

    def push_to_hub(self, repo_id: str, *, processor=None, pruning_results: PruningResults | None = None,
                    commit_message: str | None = None, private: bool | None = None, token: str | bool | None = None,
                    revision: str | None = None, create_pr: bool = False) -> str:
        """Upload this model, `processor` and a model card stating `pruning_results` to `repo_id` on the Hub."""
        return push_to_hub(self, repo_id, processor, pruning_results, commit_message=commit_message,
                           private=private, token=token, revision=revision, create_pr=create_pr)
