"""The run folder object, the training state object and the hooks of the loop."""

from __future__ import annotations

import json

import pytest
import torch
from test_training import tiny_config, tiny_data

from ddpmkit.checkpoint import read_state
from ddpmkit.errors import DdpmkitError
from ddpmkit.run import RunFolder
from ddpmkit.training import Hook, Trainer


def test_run_folder_locates_a_run_from_any_of_its_folders(tmp_path):
    Trainer(tiny_config(4, checkpoint_every=2), tmp_path / "run", data=tiny_data(), progress=False).fit()
    run = RunFolder(tmp_path / "run")
    names = [p.name for p in run.checkpoints()]
    assert names == ["step_0000002", "step_0000004"]
    for given in (tmp_path / "run", tmp_path / "run" / "checkpoints"):
        found, checkpoint = RunFolder.locate(given)
        assert found == run and checkpoint == run.checkpoint_dir(4)
    found, checkpoint = RunFolder.locate(run.checkpoint_dir(2))
    assert found == run and checkpoint.name == "step_0000002"
    assert run.load_config().train.steps == 4
    assert run.latest_grid.is_file() and run.sample_grid(4).is_file() and run.metrics_jsonl.is_file()
    assert run.loss_curve.is_file() and run.summary_file.is_file() and run.config_file.is_file()


def test_a_lone_checkpoint_is_a_run_of_its_own(tmp_path):
    import shutil

    Trainer(tiny_config(2, checkpoint_every=2), tmp_path / "run", data=tiny_data(), progress=False).fit()
    lone = tmp_path / "copied"
    shutil.copytree(RunFolder(tmp_path / "run").latest_checkpoint(), lone)
    run, checkpoint = RunFolder.locate(lone)
    assert checkpoint == lone and run.checkpoints() == [lone]
    assert run.load_config().train.steps == 2  # from the copy in state.json: no config.yaml beside it
    assert read_state(lone)["step"] == 2


def test_run_folder_errors_are_one_line(tmp_path):
    with pytest.raises(DdpmkitError, match="does not exist"):
        RunFolder.locate(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DdpmkitError, match="no checkpoint found"):
        RunFolder.locate(tmp_path / "empty")


class Counter:
    """A stateful extra: its count goes through state.json, its tensor through counter.safetensors."""

    def __init__(self):
        self.count, self.history = 0, torch.zeros(3)

    def state_dict(self):
        return {"count": self.count, "history": self.history.clone()}

    def load_state_dict(self, state):
        self.count, self.history = state["count"], state["history"].clone()


class CountingHook(Hook):
    at_stop = True

    def __init__(self, every, counter):
        super().__init__(every)
        self.counter = counter

    def __call__(self, ctx):  # a HookContext: the run's config, folder, step and state, not the Trainer
        self.counter.count += 1
        self.counter.history[self.counter.count % 3] += ctx.step


def test_registered_state_is_saved_and_restored_and_custom_hooks_run(tmp_path):
    """A later feature's state rides in the checkpoint by registering once; a hook runs when due."""
    config = tiny_config(6, checkpoint_every=3)

    def make(resume=None):
        from ddpmkit.training.hooks import SaveCheckpoint

        counter = Counter()
        hooks = [CountingHook(2, counter), SaveCheckpoint(3)]
        trainer = Trainer(config, tmp_path / "run", data=tiny_data(), progress=False, resume=resume, hooks=hooks,
                          extras={"counter": counter})
        return trainer, counter

    first, counter = make()
    first.fit(until=3)  # hook due at 2 and at the early stop 3
    assert counter.count == 2
    state = json.loads((tmp_path / "run" / "checkpoints" / "step_0000003" / "state.json").read_text())
    assert state["counter"] == {"count": 2}
    resumed, counter2 = make(resume=tmp_path / "run")
    assert resumed.step == 3 and counter2.count == 2 and torch.equal(counter2.history, counter.history)
    resumed.fit()  # due at 4 and 6
    assert counter2.count == 4
    with pytest.raises(ValueError, match="already taken"):
        resumed.state.register("model", Counter())


def test_loading_a_pipeline_does_not_import_training():
    import subprocess
    import sys

    code = ("import sys, ddpmkit.pipeline; "
            "print(sorted(m for m in sys.modules if m.startswith('ddpmkit.training')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_pipeline_uses_the_samplers_defaults_and_model_kwargs(tmp_path):
    from ddpmkit.pipeline import Pipeline

    config = tiny_config(2, checkpoint_every=2)
    config.override(["model.class_conditional=true"])
    Trainer(config, tmp_path / "run", data=tiny_data(), progress=False).fit()
    pipe = Pipeline.from_run(tmp_path / "run", device="cpu")
    assert pipe.run == RunFolder(tmp_path / "run") and pipe.num_classes == 3
    # ddim is the run's grid sampler: its train.sample_steps (2); the others their own defaults (T = 50: ddpm all T)
    for sampler, expected in [("ddim", 2), (None, 2), ("dpm++2m", 20), ("ddpm", 50)]:
        seen = []
        pipe.generate(2, sampler=sampler, callback=seen.append)
        assert len(seen) == expected, sampler
    by_labels = pipe.generate(3, labels=[0, 1, 2], steps=3, return_tensor=True)
    by_kwargs = pipe.generate(3, model_kwargs={"labels": torch.tensor([0, 1, 2])}, steps=3, return_tensor=True)
    assert torch.equal(by_labels, by_kwargs)
    batched = pipe.generate(3, labels=[0, 1, 2], steps=3, return_tensor=True, batch_size=2)
    assert torch.allclose(batched, by_labels, atol=1e-6)  # labels are chunked with the noise
    with pytest.raises(DdpmkitError, match="labels must be"):
        pipe.generate(2, labels=[5])
    # guidance on the real UNet: w = 1 is the conditional model, w = 0 the unconditional one, exactly
    with torch.no_grad():  # a trained-for-2-steps model barely uses its labels: make them matter
        pipe.model.label_emb.embedding.weight.normal_(0, 1.0)
    kw = dict(steps=3, return_tensor=True, batch_size=8)
    cond = pipe.generate(3, labels=[0, 1, 2], **kw)
    null = pipe.generate(3, labels=None, model_kwargs={"labels": torch.full((3,), -1)}, **kw)
    assert not torch.allclose(cond, null)
    assert torch.equal(pipe.generate(3, labels=[0, 1, 2], guidance=1.0, **kw), cond)
    assert torch.equal(pipe.generate(3, labels=[0, 1, 2], guidance=0.0, **kw), null)  # w = 0: the null pass alone
