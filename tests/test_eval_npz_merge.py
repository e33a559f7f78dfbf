"""``ddpmkit eval npz`` (FID of saved samples, with its floor) and ``ddpmkit eval merge`` (sweeps into one table)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import require_cached

from ddpmkit.cli import main
from ddpmkit.data import load_dataset
from ddpmkit.errors import DdpmkitError
from ddpmkit.eval.classifier import classifier_is_cached
from ddpmkit.eval.fid import fid_from_features
from ddpmkit.eval.merge import merge_rows, merge_sweeps, pivot_markdown, write_merged
from ddpmkit.eval.npz import fid_of_npz, halves

N = 40  # digits: 1,797 8x8 images shipped with scikit-learn, no download


@pytest.fixture(scope="module")
def classifier():
    """The pinned MNIST classifier: 128-d features, so the FIDs take milliseconds (Inception's 2048-d take seconds)."""
    require_cached(classifier_is_cached(), "the MNIST classifier", "ddpmkit eval fetch")
    from ddpmkit.eval.classifier import MnistClassifier

    return MnistClassifier()


@pytest.fixture(scope="module")
def digits():
    pytest.importorskip("sklearn")
    return load_dataset("digits", "train", progress=False).images


def test_halves_are_disjoint_fixed_and_equal():
    a, b = halves(11)
    assert len(a) == len(b) == 5 and not set(a) & set(b)
    assert np.array_equal(halves(11)[0], a) and not np.array_equal(halves(11, seed=1)[0], a)


def test_npz_of_real_half_a_scores_the_floor(tmp_path, digits, classifier):
    """Samples that are half A's real images score exactly the floor FID(A, B) and 0 against A, at the same N."""
    a, b = halves(len(digits))
    path = tmp_path / "real.npz"
    np.savez_compressed(path, images=digits[a[:N]])
    result = fid_of_npz(path, "digits", num=N, extractor=classifier, progress=False)
    floor = fid_from_features(classifier(digits[a[:N]], progress=False), classifier(digits[b[:N]], progress=False))
    assert result.n == N and result.floor == pytest.approx(floor, rel=1e-9)
    assert result.fid == pytest.approx(result.floor, rel=1e-9) and result.floor > 0
    assert abs(result.fid_against_A) < 1e-6 * result.floor
    assert result.extractor == classifier.id and result.samples == str(path)
    # samples unlike the data (the digits upside down and darkened) score far above the floor
    worse = fid_of_npz(digits[a[:N], ::-1] // 2, "digits", num=N, extractor=classifier, progress=False)
    assert worse.floor == pytest.approx(floor, rel=1e-9) and worse.fid > 2 * floor
    # samples in several files (as a GPU machine sends them back) are one set, read in order
    first, second = tmp_path / "part_0.npz", tmp_path / "part_1.npz"
    np.savez_compressed(first, images=digits[a[:15]])
    np.savez_compressed(second, images=digits[a[15:N]])
    parts = fid_of_npz([first, second], "digits", num=N, extractor=classifier, progress=False)
    assert parts.fid == pytest.approx(result.fid, rel=1e-9) and parts.samples == f"{first}, {second}"


def test_npz_refuses_too_few_or_wrong_images(tmp_path, digits, classifier):
    few = tmp_path / "few.npz"
    np.savez_compressed(few, images=digits[:5])
    with pytest.raises(DdpmkitError, match="holds 5 images; this score needs 898"):
        fid_of_npz(few, "digits", extractor=classifier, progress=False)
    other = tmp_path / "other.npz"
    np.savez_compressed(other, x=digits[:5])
    with pytest.raises(DdpmkitError, match="not 'images'"):
        fid_of_npz(other, "digits", extractor=classifier)
    rgb = tmp_path / "rgb.npz"
    np.savez_compressed(rgb, images=np.repeat(digits[:N], 3, axis=-1))
    with pytest.raises(DdpmkitError, match="trained on"):
        fid_of_npz(rgb, "digits", num=N, extractor=classifier)
    with pytest.raises(DdpmkitError, match="does not exist"):
        fid_of_npz(tmp_path / "missing.npz", "digits", extractor=classifier)


def test_cli_eval_npz_writes_json(tmp_path, digits, classifier, capsys):
    a, _ = halves(len(digits))
    path, out = tmp_path / "s.npz", tmp_path / "fid.json"
    np.savez_compressed(path, images=digits[a[:N]])
    assert main(["eval", "npz", str(path), "--data", "digits", "--num", str(N), "--features", "classifier",
                 "--label", "real half A", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["n"] == N and result["label"] == "real half A" and result["fid"] == pytest.approx(result["floor"])
    assert f"at N = {N}; floor" in capsys.readouterr().out
    # an --out that cannot be written is refused before any work, in one line
    assert main(["eval", "npz", str(path), "--data", "digits", "--out", str(out / "x.json")]) == 2
    assert "cannot be written" in capsys.readouterr().err


def _row(sampler, nfe, fid, num=500, ref="mnist:test", **extra):
    return {"sampler": sampler, "steps": nfe, "nfe": nfe, "seconds": 1.0, "images_per_s": 1.0, "num": num,
            "seed": 0, "ref": ref, "ref_n": 2000, "extractor": "inception", "fid": fid, **extra}


def test_merge_keeps_every_row_sorted_with_ratios(tmp_path):
    a, b = tmp_path / "a" / "sweep.json", tmp_path / "b" / "sweep.json"
    for path, rows in ((a, [_row("ddim", 50, 40.0), _row("ddim", 10, 60.0, cfid=3.0)]), (b, [_row("unipc", 10, 42.0)])):
        path.parent.mkdir()
        path.write_text(json.dumps(rows))
    merged = merge_sweeps([a, b], run="runs/mnist")
    assert [(r["sampler"], r["nfe"]) for r in merged.rows] == [("ddim", 10), ("ddim", 50), ("unipc", 10)]
    assert merged.rows[0]["cfid"] == 3.0  # rows keep every field
    assert "| 10 | 60.0 (+50%) | 42.0 (+5%) |" in merged.markdown and "| 50 | 40.0 (+0%) |  |" in merged.markdown
    paths = write_merged(merged, tmp_path / "out")
    assert json.loads(paths["json"].read_text()) == {"run": "runs/mnist", "rows": merged.rows}
    assert paths["plot"].stat().st_size > 0 and "Run: runs/mnist" in paths["markdown"].read_text()
    # a merged report merges again, and without the base setting there are no ratios
    again = merge_sweeps([paths["json"]], base=("ddpm", 1000))
    assert again.rows == merged.rows and "| 10 | 60.0 | 42.0 |" in again.markdown


def test_merge_refuses_different_n_reference_or_duplicate_settings():
    with pytest.raises(DdpmkitError, match="differ in num"):
        merge_rows([[_row("ddim", 50, 40.0)], [_row("unipc", 10, 42.0, num=200)]])
    with pytest.raises(DdpmkitError, match="differ in ref"):
        merge_rows([[_row("ddim", 50, 40.0)], [_row("unipc", 10, 42.0, ref="mnist:train")]])
    with pytest.raises(DdpmkitError, match="both hold the setting sampler ddim, steps 10"):
        merge_rows([[_row("ddim", 10, 40.0)], [_row("ddim", 10, 41.0)]], ["a.json", "b.json"])
    assert pivot_markdown([{"sampler": "ddim", "steps": 5, "num": 8}]) == ""  # nothing scored: no pivot


def test_cli_eval_merge(tmp_path, capsys):
    a, c = tmp_path / "a.json", tmp_path / "c.json"
    a.write_text(json.dumps([_row("ddim", 50, 40.0), _row("ddim", 10, 60.0)]))
    c.write_text(json.dumps([_row("unipc", 10, 42.0, num=200)]))
    out = tmp_path / "merged"
    assert main(["eval", "merge", str(a), "--out", str(out), "--base", "ddim:10"]) == 0
    assert "| 50 | 40.0 (-33%) |" in capsys.readouterr().out and (out / "merged.json").exists()
    assert main(["eval", "merge", str(a), "--out", str(a)]) == 2  # a file where the report folder should go
    assert "is a file, not a folder" in capsys.readouterr().err
    assert main(["eval", "merge", str(a), str(c), "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()
    err = capsys.readouterr().err
    assert "differ in num" in err and len(err.strip().splitlines()) == 1
