"""Run by `torchrun --nproc_per_node 2 -m tests.ddp_train OUT JOB` (see test_training.py): a few DDP steps on CPU
with gloo, then each rank writes what it ended with to OUT/rank<r>.json.

JOB `finetune`: `PruningTrainer` with the keep-ratio schedule and self-distillation on a pruned model; `base`:
`train_base_model` (the `RetrievalPretrainer` with grounding losses) on the micro preset, data cached in OUT.
"""

import hashlib
import json
import os
import sys
from pathlib import Path

import torch

from hf_vltprune import KeepRatioScheduler, PruningTrainer, SelfDistillation
from hf_vltprune.reduce import reducers_of
from hf_vltprune.training import itm_loss

from .test_training import ProgressRecorder
from .training_setup import MatchingData, tiny_retrieval_model, training_args


def parameter_digest(model) -> str:
    digest = hashlib.sha256()
    for tensor in model.state_dict().values():
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def finetune(out: Path) -> None:
    model = tiny_retrieval_model(seed=0)
    initial = parameter_digest(model)
    recorder = ProgressRecorder()
    args = training_args(out, max_steps=3, per_device_train_batch_size=2, ddp_backend="gloo",
                         ddp_find_unused_parameters=True)
    trainer = PruningTrainer(model=model, args=args, train_dataset=MatchingData(), compute_loss_func=itm_loss,
                             callbacks=[KeepRatioScheduler(warmup_steps=2), SelfDistillation(), recorder])
    trainer.train()
    rank = torch.distributed.get_rank()
    reducers = reducers_of(model)
    Path(out, f"rank{rank}.json").write_text(json.dumps({
        "world_size": torch.distributed.get_world_size(),
        "progress": recorder.seen,
        "final_progress": [r.progress for r in reducers],
        "checksum": parameter_digest(trainer.model),
        "initial_checksum": initial,
    }))


def base(out: Path) -> None:
    os.environ["HF_VLTPRUNE_CACHE"] = str(out / "cache")
    from hf_vltprune.embedded import base_models

    digests = []

    def evaluate_itm(model, *args, **kwargs):  # called with the trained model on every rank
        digests.append(parameter_digest(model))
        return scored(model, *args, **kwargs)

    scored, base_models.evaluate_itm = base_models.evaluate_itm, evaluate_itm
    base_models.train_base_model("micro", out / "model", max_steps=3)
    Path(out, f"rank{torch.distributed.get_rank()}.json").write_text(json.dumps({
        "world_size": torch.distributed.get_world_size(),
        "checksum": digests[0],
    }))


if __name__ == "__main__":
    {"finetune": finetune, "base": base}[sys.argv[2]](Path(sys.argv[1]))
    if torch.distributed.is_initialized():  # exiting with the gloo group alive once aborted a rank at teardown
        torch.distributed.destroy_process_group()
