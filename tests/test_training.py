"""Pruning-aware fine-tuning with the stock Trainer: keep-ratio warm-up, self-distillation, resume, accumulation,
logs, and two processes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import Trainer, TrainerCallback

from hf_vltprune import KeepRatioScheduler, PruningTrainer, SelfDistillation
from hf_vltprune.reduce import reducers_of
from hf_vltprune.training import distillation_loss, itm_loss

from .training_setup import MatchingData, tiny_retrieval_model, training_args


class ProgressRecorder(TrainerCallback):
    """The reducers' progress during each optimizer step."""

    def __init__(self):
        self.seen = []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.seen.append(reducers_of(model)[0].progress)


def train(tmp_path, model=None, callbacks=(), trainer_class=PruningTrainer, resume=None, **args):
    model = model or tiny_retrieval_model()
    trainer = trainer_class(model=model, args=training_args(tmp_path, **args), train_dataset=MatchingData(),
                            compute_loss_func=itm_loss, callbacks=list(callbacks))
    trainer.train(resume_from_checkpoint=resume)
    return trainer


@pytest.mark.parametrize("shape, expected", [("linear", [0, 0.25, 0.5, 0.75, 1, 1]),
                                             ("cosine", [0, 0.1464, 0.5, 0.8536, 1, 1]),
                                             ("step", [0, 0, 0.5, 0.5, 1, 1])])
def test_keep_ratio_schedule_shapes(shape, expected):
    scheduler = KeepRatioScheduler(warmup_steps=4, shape=shape, num_stages=2)
    assert [round(scheduler.progress(step), 4) for step in range(6)] == expected
    delayed = KeepRatioScheduler(warmup_steps=2, start_step=3)
    assert [delayed.progress(step) for step in range(6)] == [0, 0, 0, 0, 0.5, 1]


@pytest.mark.parametrize("kwargs, field", [(dict(warmup_steps=-1), "warmup_steps"), (dict(warmup_steps=2.5), "warmup"),
                                           (dict(warmup_steps=2, shape="exp"), "shape"),
                                           (dict(warmup_steps=2, num_stages=0), "num_stages"),
                                           (dict(warmup_steps=2, start_step=-3), "start_step")])
def test_scheduler_rejects_bad_arguments(kwargs, field):
    with pytest.raises(ValueError, match=field):
        KeepRatioScheduler(**kwargs)


@pytest.mark.parametrize("kwargs, field", [(dict(alpha=-1), "alpha"), (dict(temperature=0), "temperature"),
                                           (dict(hidden_weight=float("nan")), "hidden_weight"),
                                           (dict(hidden_weight=1.0, hidden_field=""), "hidden_field"),
                                           (dict(alpha=0), "nothing would be distilled")])
def test_self_distillation_rejects_bad_arguments(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SelfDistillation(**kwargs)


def test_warm_up_moves_the_realised_keep_from_one_to_the_target(tmp_path):
    recorder = ProgressRecorder()
    trainer = train(tmp_path, callbacks=[KeepRatioScheduler(warmup_steps=3), recorder])
    assert recorder.seen == pytest.approx([0, 1 / 3, 2 / 3, 1])
    kept = [entry["keep_vision_model"] for entry in trainer.state.log_history if "keep_vision_model" in entry]
    # Logged after each step with that step's progress: 65 tokens, 3 layers, keep 0.5 of the 64 patches at the end.
    assert kept[0] == 1.0 and kept[-1] < kept[1] < kept[0]
    assert all(entry["gflops"] > 0 for entry in trainer.state.log_history if "keep_vision_model" in entry)
    assert recorder.seen[-1] == 1.0 and all(
        m.progress == 1.0 for m in reducers_of(trainer.model))


def test_scheduler_longer_than_training_is_rejected_before_the_first_step(tmp_path):
    with pytest.raises(ValueError, match="exceeds the 4 training steps"):
        train(tmp_path, callbacks=[KeepRatioScheduler(warmup_steps=3, start_step=2)])


def test_resume_from_checkpoint_continues_the_schedule_and_training_exactly(tmp_path):
    full_recorder, resumed_recorder = ProgressRecorder(), ProgressRecorder()
    full = train(tmp_path / "full", callbacks=[KeepRatioScheduler(warmup_steps=4), full_recorder],
                 save_strategy="steps", save_steps=2)
    checkpoint = tmp_path / "full" / "checkpoint-2"
    saved_state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert saved_state["stateful_callbacks"]["KeepRatioScheduler"]["args"]["warmup_steps"] == 4

    resumed = train(tmp_path / "resumed", callbacks=[KeepRatioScheduler(warmup_steps=1), resumed_recorder],
                    resume=str(checkpoint), restore_callback_states_from_checkpoint=True)
    assert resumed_recorder.seen == full_recorder.seen[2:]  # the saved schedule, not the one passed in
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name


def test_gradient_accumulation_gives_the_loss_scale_of_one_large_batch(tmp_path):
    distil = dict(alpha=1.0, hidden_weight=0.5)
    one = train(tmp_path / "one", callbacks=[SelfDistillation(**distil)], max_steps=1)
    accumulated = train(tmp_path / "two", callbacks=[SelfDistillation(**distil)], max_steps=1,
                        per_device_train_batch_size=2, gradient_accumulation_steps=2)
    assert one.state.log_history[0]["loss"] == pytest.approx(accumulated.state.log_history[0]["loss"], rel=1e-5)
    for (name, a), b in zip(one.model.state_dict().items(), accumulated.model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name


def test_self_distillation_from_the_unpruned_self_is_zero_without_pruning_and_positive_with_it(tmp_path):
    settings = dict(alpha=1.0, hidden_weight=1.0)
    unpruned = train(tmp_path / "a", model=tiny_retrieval_model(vision_keep=1.0),
                     callbacks=[SelfDistillation(**settings)], max_steps=2)
    pruned = train(tmp_path / "b", callbacks=[SelfDistillation(**settings)], max_steps=2)

    def logged(trainer, name):
        return [entry[name] for entry in trainer.state.log_history if name in entry]

    assert len(logged(unpruned, "distillation_loss")) == 2
    assert max(map(abs, logged(unpruned, "distillation_loss") + logged(unpruned, "hidden_distillation_loss"))) < 1e-9
    # The random tiny model's ITM head barely reads the image, so the summary state is where pruning shows.
    assert min(logged(pruned, "hidden_distillation_loss")) > 1e-4
    assert all(m.enabled for m in reducers_of(pruned.model)) and pruned.model.training


def test_hidden_distillation_reads_the_named_output_field(tmp_path):
    def hidden_losses(field, folder):
        trainer = train(tmp_path / folder, callbacks=[SelfDistillation(alpha=0.0, hidden_weight=1.0,
                                                                       hidden_field=field)], max_steps=2)
        return [e["hidden_distillation_loss"] for e in trainer.state.log_history if "hidden_distillation_loss" in e]

    vision, multimodal = hidden_losses("last_hidden_state", "a"), hidden_losses("question_embeds", "b")
    assert min(multimodal) > 0 and multimodal != pytest.approx(vision, rel=1e-3)  # another state, another loss
    with pytest.raises(ValueError, match="hidden_field='image_embeds'"):
        hidden_losses("image_embeds", "c")


def test_self_distillation_from_a_given_teacher(tmp_path):
    teacher = tiny_retrieval_model(vision_keep=1.0, seed=1)
    before = [p.clone() for p in teacher.parameters()]
    trainer = train(tmp_path, callbacks=[SelfDistillation(teacher=teacher, task_weight=0.0)], max_steps=2)
    assert all(torch.equal(a, b) for a, b in zip(before, teacher.parameters())), "the teacher must not train"
    logged = [e for e in trainer.state.log_history if "distillation_loss" in e]
    assert logged[0]["loss"] == pytest.approx(logged[0]["distillation_loss"], rel=1e-3)  # task weight 0


def test_self_distillation_needs_the_pruning_trainer(tmp_path):
    with pytest.raises(ValueError, match="PruningTrainer"):
        train(tmp_path, callbacks=[SelfDistillation()], trainer_class=Trainer)


def test_distillation_loss_is_the_tempered_kl():
    student, teacher = torch.randn(5, 3), torch.randn(5, 3)
    assert distillation_loss(teacher, teacher, 2.0).item() == pytest.approx(0.0, abs=1e-7)
    p, q = (teacher / 2).softmax(-1), (student / 2).softmax(-1)
    expected = 4 * (p * (p.log() - q.log())).sum(-1).mean()
    assert distillation_loss(student, teacher, 2.0).item() == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(ValueError, match="shape"):
        distillation_loss(student, teacher[:, :2])


def run_two_processes(out: Path, job: str) -> list[dict]:
    """`tests/ddp_train.py JOB` under `torchrun` with 2 CPU processes; what each rank reported."""
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
               "-m", "tests.ddp_train", str(out), job]
    result = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads((out / f"rank{rank}.json").read_text()) for rank in (0, 1)]


def test_two_processes_end_with_identical_parameters_and_schedule(tmp_path):
    ranks = run_two_processes(tmp_path, "finetune")
    assert ranks[0]["world_size"] == ranks[1]["world_size"] == 2
    assert ranks[0]["progress"] == ranks[1]["progress"] == [0.0, 0.5, 1.0]
    assert ranks[0]["final_progress"] == ranks[1]["final_progress"] == [1.0]
    assert ranks[0]["checksum"] == ranks[1]["checksum"] != ranks[0]["initial_checksum"]


def test_base_model_training_runs_on_two_processes(tmp_path):
    """`train_base_model` under DDP: both ranks end with the same trained weights, which the first one saved."""
    from transformers import BlipConfig, BlipForImageTextRetrieval

    from .ddp_train import parameter_digest

    ranks = run_two_processes(tmp_path, "base")
    assert ranks[0]["world_size"] == ranks[1]["world_size"] == 2
    assert ranks[0]["checksum"] == ranks[1]["checksum"]
    saved = tmp_path / "model"
    assert parameter_digest(BlipForImageTextRetrieval.from_pretrained(saved)) == ranks[0]["checksum"]
    torch.manual_seed(0)  # the initialisation train_base_model starts from
    assert parameter_digest(BlipForImageTextRetrieval(BlipConfig.from_pretrained(saved))) != ranks[0]["checksum"]
    log = json.loads((saved / "metrics.json").read_text())["log_history"]
    assert any("attention_grounding" in entry for entry in log)  # the grounding losses trained too


def test_reducer_parameters_can_train_at_their_own_learning_rate(tmp_path):
    model = tiny_retrieval_model(method="madtp")
    trainer = train(tmp_path, model=model, max_steps=1)
    assert len(trainer.optimizer.param_groups) == 2  # the stock grouping
    trainer = PruningTrainer(model=model, args=training_args(tmp_path), train_dataset=MatchingData(),
                             compute_loss_func=itm_loss, reducer_learning_rate=0.5)
    optimizer = trainer.create_optimizer()
    reducer_group = optimizer.param_groups[-1]
    assert reducer_group["lr"] == 0.5
    assert {id(p) for p in reducer_group["params"]} == {
        id(p) for name, p in model.named_parameters() if ".reducer." in name}
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))
    with pytest.raises(ValueError, match="reducer_learning_rate"):
        PruningTrainer(model=model, args=training_args(tmp_path), reducer_learning_rate=0)
