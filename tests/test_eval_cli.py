"""`ddpmkit eval` end to end on a tiny run: the steps-versus-quality table, JSON and plot."""

from __future__ import annotations

import json

import pytest
from conftest import require_cached

from ddpmkit.cli import main

pytest.importorskip("sklearn", reason="the digits data set needs scikit-learn")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("evalrun") / "run"
    assert main(["train", "--preset", "tiny", "--no-progress", "--device", "cpu", "--out", str(run),
                 "--steps", "4", "--set", "train.sample_every=100"]) == 0
    return run


@pytest.mark.slow
def test_eval_sweep_writes_table_json_and_plot(tiny_run, capsys):
    from ddpmkit.eval.classifier import classifier_is_cached
    from ddpmkit.eval.inception import inception_is_cached

    require_cached(inception_is_cached() and classifier_is_cached(), "Inception and MNIST-classifier weights")
    code = main(["eval", str(tiny_run), "--num", "4", "--ref-num", "8", "--sampler", "ddim,dpm++2m",
                 "--steps", "2,3", "--metrics", "fid,kid,cfid,classes", "--device", "cpu", "--precision", "fp32"])
    assert code == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "| ddim" in out and "| dpm++2m" in out
    assert "| sampler | steps | NFE | seconds | images/s | FID |" in out
    report = tiny_run / "eval"
    rows = json.loads((report / "sweep.json").read_text())
    rows = rows["rows"] if isinstance(rows, dict) else rows
    assert [(r["sampler"], r["steps"]) for r in rows] == [("ddim", 2), ("ddim", 3), ("dpm++2m", 2), ("dpm++2m", 3)]
    for row in rows:
        assert row["num"] == 4 and row["ref_n"] == 8 and row["nfe"] == row["steps"]
        assert row["fid"] > 0 and row["cfid"] > 0 and row["seconds"] > 0 and row["images_per_s"] > 0
    assert (report / "sweep.md").exists() and (report / "sweep.png").exists()


def test_eval_bad_input(tiny_run, capsys):
    assert main(["eval", str(tiny_run), "--sampler", "euler"]) == 2
    assert "unknown sampler" in capsys.readouterr().err
    assert main(["eval", str(tiny_run), "--steps", "5,x"]) == 2
    assert "comma-separated integers" in capsys.readouterr().err
    assert main(["eval", str(tiny_run), "--steps", "500"]) == 2
    assert "exceeds the model's T" in capsys.readouterr().err


def test_data_command_through_main(capsys):
    assert main(["data", "list"]) == 0
    listing = capsys.readouterr().out
    for name in ["mnist", "fashion-mnist", "pokemon", "emoji", "digits"]:
        assert name in listing
    assert main(["data", "show", "nope"]) == 2
