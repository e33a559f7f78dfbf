"""Progressive distillation: the two-teachers-steps target against the project's own DDIM sampler on an exact
Gaussian oracle, nested grids, the rounds, each refusal, exact resume, and the student run it writes."""

from __future__ import annotations

import io
import json
import os
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ddpmkit import Diffusion, NoiseSchedule
from ddpmkit.cli import main
from ddpmkit.distill import Distiller, halving_rounds, plan_distillation, round_grids
from ddpmkit.distill import trainer as distill_trainer
from ddpmkit.distill.method import (
    CLEAN,
    distill_loss,
    target_from,
    teacher_target,
    truncated_snr_weight,
    two_step_times,
)
from ddpmkit.errors import DdpmkitError
from ddpmkit.pipeline import Pipeline
from ddpmkit.request import SampleRequest
from ddpmkit.run import RunFolder
from ddpmkit.sampling import NULL_LABEL, DDIMStep, sample_loop

pytest.importorskip("sklearn", reason="the digits data set needs scikit-learn (pip install -e '.[test]')")

TINY = ["--preset", "tiny", "--data", "digits", "--set", "data.image_size=16", "--no-progress", "--device", "cpu"]


# ----- the math on an exact Gaussian oracle ------------------------------------------------------------------

MU, S = 0.3, 0.5  # data x ~ N(μ, s²) in every pixel


def oracle_x0(diffusion: Diffusion, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """E[x | z_t] for Gaussian data: μ + α s² / (α² s² + σ²) · (z - α μ), exact."""
    abar = diffusion.schedule.alphas_cumprod.double()[t].reshape(-1, 1, 1, 1)
    alpha, var = abar.sqrt(), 1 - abar
    return MU + alpha * S**2 / (abar * S**2 + var) * (z - alpha * MU)


def as_output(diffusion: Diffusion, x0: torch.Tensor, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What a model of the diffusion's parameterisation outputs for a given x̂ at (z, t)."""
    eps = diffusion.eps_from_x0(z, t, x0)
    return {"eps": eps, "x0": x0, "v": diffusion.v_from_x0_eps(x0, eps, t)}[diffusion.prediction.value]


def captured_steps(model, diffusion: Diffusion, z: torch.Tensor, grid: list[int]) -> list[torch.Tensor]:
    """The samples after every step of the project's DDIM sampler (η = 0) walking ``grid`` from z."""
    steps: list[torch.Tensor] = []
    sample_loop(model, diffusion, z, grid, DDIMStep(0.0), callback=lambda step: steps.append(step.x))
    return steps


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_a_student_that_outputs_the_target_takes_the_teachers_two_ddim_steps_in_one(prediction):
    diffusion = Diffusion(NoiseSchedule.cosine(100), prediction=prediction, clip_denoised=False)
    teacher = lambda z, t: as_output(diffusion, oracle_x0(diffusion, z, t), z, t)
    student_grid, teacher_grid = round_grids(100, 4)
    for j in range(4):
        t, t1, t2 = two_step_times(student_grid, teacher_grid, torch.full((3,), j))
        z = torch.randn(3, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(j))
        last = int(t2[0]) == CLEAN
        # the teacher: two steps of the project's own sampler over {t, t', t''}
        z2 = captured_steps(teacher, diffusion, z, [int(t[0]), int(t1[0])] + ([] if last else [int(t2[0])]))[1]
        x_tilde = teacher_target(teacher, diffusion, z, t, t1, t2)
        assert torch.allclose(target_from(diffusion, z, t, z2, t2), x_tilde, rtol=0, atol=1e-12)
        # the student: one step of the same sampler over {t, t''}, with x̂ = x̃, lands where the teacher's two did
        student = lambda z_, t_, x=x_tilde: as_output(diffusion, x, z_, t_)
        one = captured_steps(student, diffusion, z, [int(t[0])] + ([] if last else [int(t2[0])]))[0]
        assert torch.allclose(one, z2, rtol=0, atol=1e-10), (prediction, j)
        if last:  # t'' = clean: the target is the teacher's final output itself
            assert torch.allclose(x_tilde, z2, rtol=0, atol=1e-12)


def test_the_loss_is_truncated_snr_weighted_and_zero_for_the_target():
    diffusion = Diffusion(NoiseSchedule.cosine(100), prediction="v", clip_denoised=False)
    snr = diffusion.schedule.snr.double()
    t = torch.tensor([0, 50, 99])
    assert torch.allclose(truncated_snr_weight(diffusion, t).double(), snr[t].clamp(min=1), rtol=1e-6)
    assert truncated_snr_weight(diffusion, torch.tensor([99])).item() == 1.0  # SNR < 1 near T: weight 1
    grids = round_grids(100, 4)
    teacher = lambda z, t: as_output(diffusion, oracle_x0(diffusion, z, t), z, t).float()

    def student(z, t, shift=0.0):  # x̂ = x̃ for its own (z, t), found from t's place on the student grid
        j = (grids[0][None, :] == t[:, None].cpu()).float().argmax(dim=1)
        _, t1, t2 = two_step_times(*grids, j)
        return as_output(diffusion, teacher_target(teacher, diffusion, z, t, t1, t2) + shift, z, t)

    x = MU + S * torch.randn(8, 1, 4, 4)
    eps, j = torch.randn(8, 1, 4, 4), torch.arange(8) % 4
    assert distill_loss(student, teacher, diffusion, x, eps, j, grids).item() < 1e-9
    off = distill_loss(lambda z, t: student(z, t, shift=0.1), teacher, diffusion, x, eps, j, grids).item()
    expected = (truncated_snr_weight(diffusion, grids[0][j]) * 0.01).mean().item()  # w · 0.1²
    assert off == pytest.approx(expected, rel=1e-3)


# ----- grids and rounds ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("T", [100, 1000, 1024, 4000])
def test_trailing_grids_of_n_and_2n_steps_nest_for_every_halving_round(T):
    n = 1
    while 2 * n <= T:
        student, teacher = round_grids(T, n)
        assert torch.equal(teacher[0::2], student) and int(teacher[0]) == T - 1 and len(teacher) == 2 * n
        n *= 2


def test_grids_that_rounding_does_not_nest_are_refused():
    with pytest.raises(DdpmkitError, match="are not nested"):
        round_grids(100, 48)


def test_rounds_halve_from_n_to_k():
    assert halving_rounds(64, 4) == [32, 16, 8, 4]
    assert halving_rounds(4, 1) == [2, 1]
    assert halving_rounds(32, 16) == [16]
    with pytest.raises(DdpmkitError, match=r"reachable: 32, 16, 8, 4, 2, 1"):
        halving_rounds(64, 3)
    for k in (64, 128):  # K = N is no round; K > N is none either
        with pytest.raises(DdpmkitError, match="cannot be reached"):
            halving_rounds(64, k)
    with pytest.raises(DdpmkitError, match="--steps must be a whole number >= 1"):
        halving_rounds(64, 0)


# ----- runs --------------------------------------------------------------------------------------------------

def run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exc:
            code = exc.code
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """A class-conditional tiny teacher (T = 100), a learned-variance run and a LoRA run."""
    root = tmp_path_factory.mktemp("distill")
    assert main(["train", *TINY, "--out", str(root / "teacher"), "--steps", "2", "--set",
                 "model.class_conditional=true", "--set", "train.sample_every=100"]) == 0
    assert main(["train", *TINY, "--out", str(root / "learned"), "--steps", "1", "--set",
                 "diffusion.variance=learned_range", "--set", "train.sample_every=100"]) == 0
    assert main(["lora", str(root / "teacher"), "--out", str(root / "adapter"), "--steps", "1", "--rank", "2",
                 "--no-progress", "--set", "train.sample_every=100"]) == 0
    (root / "userfiles").mkdir()
    (root / "userfiles" / "notes.txt").write_text("mine")
    return root


@pytest.fixture(scope="module")
def data():
    from ddpmkit.data import load_dataset

    return load_dataset("digits", "train", 16)


def distil(runs: Path, out: Path, data, until: int | None = None, resume: bool = False, interrupt_at=None):
    """8 → 4 → 2 steps, 5 iterations a round, a checkpoint every 2 (and at each round's end), fp32 on the CPU."""
    plan = plan_distillation(runs / "teacher", 2, out, from_steps=8, iters_per_round=5, batch_size=8, resume=resume)
    distiller = Distiller(plan, device="cpu", precision="fp32", progress=False, data=data, checkpoint_every=2)
    if interrupt_at is not None:  # a kill in the middle of an iteration: nothing after the last checkpoint survives
        step = distiller._step

        def dying(*args):
            if distiller.done == interrupt_at:
                raise KeyboardInterrupt
            return step(*args)

        distiller._step = dying
    return distiller.fit(until=until)


@pytest.fixture(scope="module")
def student(runs, data) -> Path:
    out = runs / "student"
    result = distil(runs, out, data)
    assert result.complete and result.iteration == 10
    return out


def test_an_interrupted_distillation_resumes_bitwise(runs, data, student):
    names = [p.name for p in RunFolder(student).checkpoints()]
    assert names == ["step_0000005", "step_0000010"]  # each round's student stays; the ones within a round go
    for interrupt_at in (6, 8):  # after a round's last checkpoint (a new round starts), and within a round
        out = runs / f"cut{interrupt_at}"
        with pytest.raises(KeyboardInterrupt):
            distil(runs, out, data, interrupt_at=interrupt_at)
        last = RunFolder(out).latest_checkpoint()
        assert last.name == ("step_0000005" if interrupt_at == 6 else "step_0000007")
        result = distil(runs, out, data, resume=True)
        assert result.complete and result.checkpoint.name == "step_0000010"
        for name in ("model", "ema", "teacher", "optimizer"):
            want = load_file(str(student / "checkpoints" / "step_0000010" / f"{name}.safetensors"))
            got = load_file(str(out / "checkpoints" / "step_0000010" / f"{name}.safetensors"))
            assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want), (interrupt_at, name)
        for name in ("step_0000005", "step_0000010"):  # the rounds' students too
            want = load_file(str(student / "checkpoints" / name / "ema.safetensors"))
            got = load_file(str(out / "checkpoints" / name / "ema.safetensors"))
            assert all(torch.equal(want[k], got[k]) for k in want)
        assert (out / "metrics.jsonl").read_text() == (student / "metrics.jsonl").read_text()  # the log, too


def test_the_student_is_a_run_that_samples_with_its_own_ddim_steps_only(runs, student, tmp_path):
    pipe = Pipeline.from_run(student, device="cpu", precision="fp32")
    request = pipe.resolve(SampleRequest(num=4))
    assert (request.sampler, request.steps, request.spacing, request.eta) == ("ddim", 2, "trailing", 0.0)
    assert pipe.generate(4, seed=1).shape == (4, 16, 16, 1)
    assert pipe.generate(4, sampler="ddim", steps=2, labels=[3], guidance=2.0).shape == (4, 16, 16, 1)
    for fields in ({"sampler": "unipc"}, {"steps": 4}, {"spacing": "linspace"}, {"eta": 0.5}, {"sampler": "ddpm"}):
        with pytest.raises(DdpmkitError, match="distilled student made for DDIM .* over 2 trailing steps"):
            pipe.resolve(SampleRequest(num=4, **fields))
    # the first round's student, in the same run, samples with its own 4 steps
    first = Pipeline.from_run(student / "checkpoints" / "step_0000005", device="cpu", precision="fp32")
    assert first.resolve(SampleRequest(num=1)).steps == 4
    # the command line gets the same defaults and the same refusal
    code, out, err = run_cli(["sample", student, "--num", "4", "--out", tmp_path / "grid.png"])
    assert code == 0 and "ddim, 2 steps, trailing spacing" in out and (tmp_path / "grid.png").is_file()
    code, _, err = run_cli(["sample", student, "--sampler", "dpm++2m", "--out", tmp_path / "x.png"])
    assert code == 2 and "made for DDIM (eta 0) over 2 trailing steps" in err
    # the config records the distillation and keeps the teacher's data, model and diffusion
    teacher_info, info = RunFolder(runs / "teacher").info(), RunFolder(student).info()
    d = info.config.distill
    assert (d.teacher_steps, d.student_steps, d.rounds, d.iters_per_round, d.sampler, d.spacing) == \
        (8, 2, (4, 2), 5, "ddim", "trailing")
    assert d.teacher == os.path.abspath(RunFolder(runs / "teacher").latest_checkpoint()) and d.wall_seconds > 0
    assert info.config.data == teacher_info.config.data and info.data_name == teacher_info.data_name
    assert info.unet == teacher_info.unet and info.diffusion.to_dict() == teacher_info.diffusion.to_dict()
    assert RunFolder(student).load_config().distill == d  # config.yaml is the newest checkpoint's config
    rows = [json.loads(line) for line in (student / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [5, 10] and all(r["loss"] >= 0 for r in rows)


def test_a_student_teaches_the_next_distillation_with_its_own_steps(student, tmp_path):
    plan = plan_distillation(student, 1, tmp_path / "one")
    assert plan.settings.from_steps == 2 and plan.settings.rounds == (1,)
    with pytest.raises(DdpmkitError, match="is a student made for 2 DDIM steps"):
        plan_distillation(student, 1, tmp_path / "one", from_steps=4)


def test_teacher_and_student_see_the_same_labels_dropped_with_the_teachers_probability(runs, data, monkeypatch):
    plan = plan_distillation(runs / "teacher", 2, runs / "labels", from_steps=8, iters_per_round=1, batch_size=8)
    distiller = Distiller(plan, device="cpu", precision="fp32", progress=False, data=data)
    assert distiller.dropout == plan.info.unet.class_dropout_prob > 0
    seen = []
    monkeypatch.setattr(distill_trainer, "distill_loss",
                        lambda student, teacher, diffusion, x, eps, j, grids, kwargs, autocast: seen.append(kwargs)
                        or (student(x, j, **kwargs) * 0).sum())
    batch = next(distiller.loader.batches())
    for p in (1.0, 0.0):
        distiller.dropout = p
        distiller._step(batch, round_grids(100, 2), 2)
        expected = torch.full_like(batch[1]["labels"], NULL_LABEL) if p else batch[1]["labels"]
        assert torch.equal(seen[-1]["labels"], expected)


def test_the_command_distils_and_a_rerun_continues(runs, tmp_path):
    out = tmp_path / "cli"
    args = ["distill", runs / "teacher", "--steps", "2", "--from-steps", "4", "--iters-per-round", "2",
            "--batch-size", "8", "--out", out, "--precision", "fp32", "--device", "cpu", "--no-progress"]
    code, stdout, err = run_cli(args)
    assert code == 0, err
    assert "4 → 2 DDIM steps" in stdout and f"ddpmkit sample {out}" in stdout
    code, stdout, err = run_cli([*args, "--resume"])
    assert code == 0 and "resuming" in stdout and "iteration 2" in stdout


@pytest.mark.parametrize(("argv", "message"), [
    (["{root}/learned", "--steps", "4", "--out", "{tmp}/r"], "learns its variance"),
    (["{root}/adapter", "--steps", "4", "--out", "{tmp}/r"], "is a LoRA run (adapters on a frozen base); merge it"),
    (["{root}/teacher", "--steps", "3", "--out", "{tmp}/r"], "--steps 3 cannot be reached from 32 steps"),
    (["{root}/teacher", "--steps", "0", "--out", "{tmp}/r"], "--steps must be a whole number >= 1"),
    (["{root}/teacher", "--steps", "-2", "--out", "{tmp}/r"], "--steps must be a whole number >= 1"),
    (["{root}/teacher", "--steps", "48", "--from-steps", "96", "--out", "{tmp}/r"], "are not nested"),
    (["{root}/teacher", "--steps", "4", "--from-steps", "256", "--out", "{tmp}/r"], "--from-steps must be between"),
    (["{root}/teacher", "--steps", "4", "--out", "{root}/teacher"], "already holds a run that is not a distillation"),
    (["{root}/teacher", "--steps", "2", "--from-steps", "8", "--iters-per-round", "6", "--out", "{root}/student"],
     "holds another distillation (--iters-per-round 5 there, 6 now)"),
    (["{root}/teacher", "--steps", "4", "--out", "{tmp}/r", "--resume"], "holds no distillation to continue"),
    (["{root}/teacher", "--steps", "4", "--out", "{root}/userfiles"], "holds files that are not part of a ddpmkit"),
    (["{root}/teacher", "--steps", "4", "--out", ""], "an empty path would write into the current folder"),
    (["{root}/teacher", "--steps", "4", "--out", "{tmp}/r", "--lr", "0"], "--lr must be a finite number > 0"),
    (["{root}/teacher", "--steps", "4", "--out", "{tmp}/r", "--iters-per-round", "0"], "--iters-per-round must be"),
    (["{root}/missing", "--steps", "4", "--out", "{tmp}/r"], "does not exist"),
    (["{root}/userfiles", "--steps", "4", "--out", "{tmp}/r"], "no checkpoint found"),
])
def test_bad_input_is_refused_in_one_line_before_any_work(runs, student, tmp_path, argv, message):
    code, out, err = run_cli(["distill", *[a.replace("{root}", str(runs)).replace("{tmp}", str(tmp_path))
                                           for a in argv]])
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and message in err, err
    assert not (tmp_path / "r").exists()
