"""The bad-input catalogue: every command, each bad input, one table.

Each case runs ``ddpmkit ARGS`` in a scratch folder beside a trained run and must give exit status 2, exactly one
line on stderr that names the problem (the expected words) with no traceback, nothing on stdout, no file created,
changed or removed anywhere in the folder, and the trained run byte-for-byte unchanged.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import re
import shlex
import shutil
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from ddpmkit.cli import main

pytest.importorskip("sklearn", reason="the digits data set needs scikit-learn (pip install -e '.[test]')")

# the tiny preset's model on scikit-learn's digits: a run in seconds
TINY = ["--preset", "tiny", "--data", "digits", "--set", "data.image_size=16", "--no-progress", "--device", "cpu"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    return make_workspace(tmp_path_factory.mktemp("bad-input"))


def make_workspace(root: Path) -> Path:
    """A folder holding a trained run (``run``), a file (``afile``), an empty folder and broken checkpoints."""
    assert main(["train", *TINY, "--out", str(root / "run"), "--steps", "2", "--set", "train.sample_every=2"]) == 0
    (root / "afile").write_text("not a folder")
    (root / "empty").mkdir()
    checkpoint = sorted((root / "run" / "checkpoints").iterdir())[-1]
    truncated = root / "truncated"
    shutil.copytree(checkpoint, truncated)
    weights = truncated / "ema.safetensors"
    weights.write_bytes(weights.read_bytes()[:64])
    disguised = root / "disguised"  # a pickle posing as weights: must be refused, never unpickled
    shutil.copytree(checkpoint, disguised)
    (disguised / "ema.safetensors").write_bytes(pickle.dumps({"weight": [1.0, 2.0]}))
    foreign = root / "foreign"
    foreign.mkdir()
    (foreign / "state.json").write_text(json.dumps({"format": "someone-elses", "step": 1}))
    # a class-conditional run with cross-attention
    assert main(["train", *TINY, "--out", str(root / "cond"), "--steps", "1", "--set", "model.class_conditional=true",
                 "--set", "model.overrides.conditioning=cross_attention",
                 "--set", "model.overrides.cross_attention_resolutions=[8]"]) == 0
    # a LoRA adapter made for another base (``other``), and adapter folders with pickled weights
    assert main(["train", *TINY, "--out", str(root / "other"), "--steps", "1", "--seed", "1"]) == 0
    assert main(["lora", str(root / "other"), "--out", str(root / "adapter"), "--steps", "1", "--rank", "2",
                 "--no-progress"]) == 0
    for name, weights in (("pickled-adapter", "adapter.pt"), ("disguised-adapter", "adapter.safetensors")):
        (root / name).mkdir()
        shutil.copy(root / "adapter" / "adapter.json", root / name)
        (root / name / weights).write_bytes(pickle.dumps({"lora_A": [1.0, 2.0]}))
    # a run that learns its variance, and a distilled student (8 -> 4 -> 2 steps, one iteration a round)
    assert main(["train", *TINY, "--out", str(root / "learned"), "--steps", "1", "--set",
                 "diffusion.variance=learned_range", "--set", "train.sample_every=2"]) == 0
    assert main(["distill", str(root / "run"), "--steps", "2", "--from-steps", "8", "--iters-per-round", "1",
                 "--batch-size", "4", "--out", str(root / "student"), "--no-progress", "--device", "cpu",
                 "--precision", "fp32"]) == 0
    make_broken_inputs(root, checkpoint)
    return root


def make_broken_inputs(root: Path, checkpoint: Path) -> None:
    """A user's folder, invalid YAML (a preset file, a run's config.yaml), weights of another model size, a folder
    with a huge PNG and one with a corrupt PNG, and a cache whose converted data set changed on disk."""
    import struct
    import zlib

    import torch
    from safetensors.torch import load_file, save_file

    from ddpmkit.data.named import cached_path
    from ddpmkit.fetch import record_sha256

    (root / "userfiles").mkdir()
    (root / "userfiles" / "notes.txt").write_text("the user's own notes")
    (root / "bad.yaml").write_text("train:\n  lr: [1,\n  steps: 3: 4\n")
    shutil.copytree(root / "run", root / "brokencfg")
    (root / "brokencfg" / "config.yaml").write_text("train: [\n")
    resized = root / "resized"  # the run's checkpoint with the weights of a twice-as-wide model
    shutil.copytree(checkpoint, resized)
    for name in ("model", "ema"):
        tensors = load_file(str(resized / f"{name}.safetensors"))
        save_file({k: torch.zeros(v.shape[0] * 2, *v.shape[1:]) if v.ndim else v for k, v in tensors.items()},
                  str(resized / f"{name}.safetensors"))

    def png(width: int, height: int, data: bytes) -> bytes:
        def chunk(kind: bytes, body: bytes) -> bytes:
            return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                + chunk(b"IDAT", data) + chunk(b"IEND", b""))

    (root / "huge").mkdir()  # 14000 x 14000 in its header: Pillow refuses to open it
    (root / "huge" / "big.png").write_bytes(png(14000, 14000, zlib.compress(b"")))
    (root / "corrupt").mkdir()  # a valid header over data that is not zlib
    (root / "corrupt" / "bad.png").write_bytes(png(16, 16, b"not zlib data at all"))
    from PIL import Image

    (root / "edit").mkdir()  # images and masks for the editing commands, beside the 16x16 grey run
    for name, value, side in (("grey", 0, 16), ("small", 0, 8), ("soft", 128, 16), ("empty", 0, 16),
                              ("full", 255, 16)):
        Image.new("L", (side, side), value).save(root / "edit" / f"{name}.png")
    Image.new("RGB", (16, 16), (200, 30, 30)).save(root / "edit" / "red.png")
    datasets = root / "badcache" / "datasets"
    datasets.mkdir(parents=True)
    shutil.copy(cached_path("digits"), datasets / "digits.npz")
    record_sha256(datasets / "digits.npz")
    changed = bytearray((datasets / "digits.npz").read_bytes())
    changed[len(changed) // 2] ^= 0xFF
    (datasets / "digits.npz").write_bytes(bytes(changed))


RUN = "{run}"
CASES = [
    # train
    (["train", "--preset", "nope"], "unknown preset 'nope'"),
    (["train", *TINY, "--data", "imagenet", "--out", "r"], "imagenet"),
    (["train", *TINY, "--steps", "0", "--out", "r"], "train.steps must be positive"),
    (["train", *TINY, "--steps", "many", "--out", "r"], "invalid int value"),
    (["train", *TINY, "--lr", "0", "--out", "r"], "train.lr must be positive"),
    (["train", *TINY, "--lr", "-0.001", "--out", "r"], "train.lr must be positive"),
    (["train", *TINY, "--batch-size", "0", "--out", "r"], "train.batch_size must be positive"),
    (["train", *TINY, "--set", "train.learning_rate=1", "--out", "r"], "unknown config key 'train.learning_rate'"),
    (["train", *TINY, "--set", "train.lr=fast", "--out", "r"], "train.lr expects a number"),
    (["train", *TINY, "--set", "lr", "--out", "r"], "expects key=value"),
    (["train", *TINY, "--set", "model.class_conditional=true", "--set", "model.overrides.conditioning=cross_attention",
      "--out", "r"], "conditioning=cross_attention needs cross_attention_resolutions"),
    (["train", *TINY, "--set", "model.class_conditional=true", "--set", "model.overrides.conditioning=text",
      "--out", "r"], "conditioning='text' is unknown"),
    (["train", *TINY, "--precision", "fp16", "--out", "r"], "fp16 training needs a GPU"),
    (["train", *TINY, "--set", "model.learn_sigma=true", "--out", "r"],
     "model.learn_sigma is set by diffusion.variance"),
    (["train", *TINY, "--set", "diffusion.variance=learned", "--out", "r"], "unknown variance 'learned'"),
    (["train", *TINY, "--set", "train.timestep_sampler=loss-second-moment", "--out", "r"],
     "only a learned variance trains"),
    (["train", *TINY, "--set", "train.timestep_sampler=lognormal", "--out", "r"], "unknown train.timestep_sampler"),
    (["train", *TINY, "--set", "train.timestep_sampler=log-normal", "--set", "train.log_sigma_std=0", "--out", "r"],
     "train.log_sigma_std must be positive"),
    (["train", *TINY, "--set", "diffusion.vlb_weight=-1", "--set", "diffusion.variance=learned_range", "--out", "r"],
     "vlb_weight must be non-negative"),
    (["train", *TINY, "--set", "data.image_size=0", "--out", "r"], "image_size"),
    (["train", *TINY, "--set", "model.norm_groups=5", "--out", "r"], "not divisible by norm_groups"),
    (["train", *TINY, "--data", "folder:{root}/empty", "--out", "r"], "no image files"),
    (["train", *TINY, "--data", "folder:{root}/missing", "--out", "r"], "does not exist"),
    (["train", *TINY, "--out", "{root}/afile"], "is a file, not a folder"),
    (["train", *TINY, "--out", "{root}/afile/run"], "is a file, not a folder"),
    (["train", *TINY, "--out", RUN], "already holds a trained run"),
    (["train", *TINY, "--out", "{root}/empty", "--resume"], "no checkpoint found"),
    (["train", "--resume", RUN, "--set", "train.batch_size=7", "--steps", "4", "--no-progress"],
     "train.batch_size was"),
    (["train", "--resume", RUN, "--set", "model.base_channels=16", "--no-progress"], "another model config"),
    (["train", "--resume", "{root}/truncated", "--out", "r", "--no-progress"], "truncated or corrupt"),
    (["train", *TINY, "--set", "train.betas=[0.9]", "--out", "r"], "train.betas expects a list of 2 values"),
    (["train", *TINY, "--set", "train.betas=[0.9,0.999,0.5]", "--out", "r"], "train.betas expects a list of 2 values"),
    (["train", *TINY, "--set", "train.betas=[0.9,1.5]", "--out", "r"], "train.betas must be two numbers in [0, 1)"),
    (["train", *TINY, "--lr", "nan", "--out", "r"], "train.lr must be a finite number"),
    (["train", *TINY, "--lr", "inf", "--out", "r"], "train.lr must be a finite number"),
    (["train", *TINY, "--set", "train.weight_decay=-1", "--out", "r"], "train.weight_decay must be >= 0"),
    (["train", *TINY, "--set", "diffusion.num_steps=0", "--out", "r"], "diffusion.num_steps (T, the noise levels)"),
    (["train", *TINY, "--out", ""], "an empty path would write into the current folder"),
    (["train", *TINY, "--out", "{root}/userfiles"], "holds files that are not part of a ddpmkit run"),
    (["train", "--preset", "{root}/bad.yaml", "--out", "r"], "is not valid YAML (line 3, column 11"),
    (["train", "--resume", "{root}/brokencfg", "--no-progress"], "config.yaml is not valid YAML (line 2"),
    (["train", "--resume", "{root}/resized", "--out", "r", "--no-progress"], "do not fit the model its state.json"),
    (["train", "--resume", RUN, "--lr", "0.002", "--no-progress"], "--allow-changes"),
    (["train", *TINY, "--data", "folder:{root}/huge", "--out", "r"], "pixels Pillow opens from an untrusted file"),
    (["train", *TINY, "--data", "folder:{root}/corrupt", "--out", "r"], "bad.png: broken data stream"),
    (["DDPMKIT_CACHE={root}/afile", "train", *TINY, "--out", "r"], "cannot be used (a file is in the way)"),
    (["DDPMKIT_CACHE=", "HOME={root}/afile", "train", *TINY, "--out", "r"], "(under HOME) cannot be used"),
    (["DDPMKIT_CACHE=/proc/x", "train", *TINY, "--out", "r"], "DDPMKIT_CACHE=/proc/x cannot be used"),
    (["DDPMKIT_CACHE={root}/badcache", "train", *TINY, "--out", "r"], "does not match the sha256 recorded"),
    # sample
    (["sample", RUN, "--num", "0"], "--num and --batch-size must be at least 1"),
    (["sample", RUN, "--batch-size", "0"], "--num and --batch-size must be at least 1"),
    (["sample", RUN, "--steps", "0"], "steps must be between 1 and"),
    (["sample", RUN, "--steps", "100000"], "steps must be between 1 and"),
    (["sample", RUN, "--eta", "-1"], "eta must be in [0, 1]"),
    (["sample", RUN, "--sampler", "euler"], "invalid choice: 'euler'"),
    (["sample", RUN, "--spacing", "uniform"], "invalid choice: 'uniform'"),
    (["sample", RUN, "--labels", "1,2"], "unconditional"),
    (["sample", RUN, "--labels", "one"], "--labels expects comma-separated integers"),
    (["sample", RUN, "--guidance", "3"], "unconditional run"),
    (["sample", RUN, "--per-class", "2"], "unconditional run: --per-class needs a class-conditional model"),
    (["sample", "{root}/cond", "--labels", "10"], "labels must be 1 or 64 values in 0..9"),
    (["sample", "{root}/cond", "--labels", "3", "--guidance", "-1"], "--guidance must be a finite number >= 0"),
    (["sample", "{root}/cond", "--per-class", "0"], "--per-class must be at least 1"),
    (["sample", "{root}/cond", "--per-class", "2", "--labels", "1"], "--per-class draws every class"),
    (["sample", RUN, "--out", "{root}/afile/x.png"], "is a file, not a folder"),
    (["sample", RUN, "--out", "{root}/empty"], "is a folder"),
    (["sample", RUN, "--individual", "{root}/afile"], "is a file, not a folder"),
    (["sample", RUN, "--gif", "--num", "8", "--batch-size", "4"], "--gif records one batch"),
    (["sample", "{root}/missing"], "does not exist"),
    (["sample", "{root}/empty"], "no checkpoint found"),
    (["sample", "{root}/truncated"], "truncated or corrupt"),
    (["sample", "{root}/disguised"], "truncated or corrupt"),
    (["sample", "{root}/foreign"], "not a ddpmkit checkpoint"),
    (["sample", RUN, "--weights", "best"], "invalid choice: 'best'"),
    (["sample", RUN, "--lora", "{root}/missing"], "does not exist"),
    (["sample", RUN, "--lora", "{root}/empty"], "has no adapter.json"),
    (["sample", RUN, "--lora", "{root}/pickled-adapter"], "never from pickle"),
    (["sample", RUN, "--lora", "{root}/disguised-adapter"], "is not a safetensors file"),
    (["sample", RUN, "--lora", "{root}/adapter"], "was made for base sha256:"),
    (["sample", RUN, "--lora-scale", "0.5"], "a LoRA scale needs a model with adapters"),
    (["sample", RUN, "--lora-scale", "nan"], "--lora-scale must be a finite number"),
    (["sample", RUN, "--lora-scale", "inf"], "--lora-scale must be a finite number"),
    (["sample", RUN, "--out", "{root}/grid.txt"], "not a picture format"),
    (["sample", RUN, "--num", "1000000000"], "more than this machine has"),
    (["sample", "{root}/resized"], "do not fit the model its state.json"),
    # eval
    (["eval", RUN, "--steps", "0"], "steps must be between 1 and"),
    (["eval", RUN, "--steps", "10,x"], "--steps expects comma-separated integers"),
    (["eval", RUN, "--sampler", "euler"], "unknown sampler 'euler'"),
    (["eval", RUN, "--sampler", "ddim:uniform"], "unknown timestep spacing 'uniform'"),
    (["eval", RUN, "--nll-steps", "10"], "--nll-steps applies to --nll only"),
    (["eval", RUN, "--guidance", "2"], "unconditional run: --guidance needs a class-conditional model"),
    (["eval", "{root}/cond", "--guidance", "1,-2"], "--guidance must be a finite number >= 0"),
    (["eval", "{root}/cond", "--guidance", "1,strong"], "--guidance expects comma-separated numbers"),
    (["eval", RUN, "--nll", "--nll-steps", "1"], "--nll-steps must be between 2 and 100"),
    (["eval", RUN, "--num", "1"], "must be at least 2"),
    (["eval", RUN, "--metrics", "psnr"], "unknown metrics"),
    (["eval", RUN, "--metrics", ""], "name at least one metric"),
    (["eval", RUN, "--ref-split", "dev"], "unknown reference split"),
    (["eval", RUN, "--out", "{root}/afile"], "is a file, not a folder"),
    (["eval", "{root}/missing"], "does not exist"),
    (["eval"], "the following arguments are required: run"),
    # lora
    (["lora", RUN, "--out", "r", "--rank", "0"], "LoRA rank must be a positive integer"),
    (["lora", RUN, "--out", "r", "--rank", "-4"], "LoRA rank must be a positive integer"),
    (["lora", RUN, "--out", "r", "--rank", "64", "--no-progress"], "LoRA rank 64 is above the width of"),
    (["lora", RUN, "--out", "r", "--targets", "attn,ffn"], "unknown LoRA target 'ffn'"),
    (["lora", RUN, "--out", RUN], "already holds a trained run"),
    (["lora", RUN, "--out", "{root}/afile"], "is a file, not a folder"),
    (["lora", RUN, "--out", ""], "an empty path would write into the current folder"),
    (["lora", RUN, "--out", "{root}/userfiles", "--no-progress"], "holds files that are not part of a ddpmkit run"),
    (["lora", "{root}/missing", "--out", "r"], "does not exist"),
    (["lora", "{root}/adapter", "--out", "r", "--no-progress"], "is itself a LoRA run"),
    (["lora", "merge", RUN, "{root}/empty", "--out", "r"], "has no adapter.json"),
    (["lora", "merge", RUN, "{root}/adapter", "--out", "r"], "was made for base sha256:"),
    (["lora", "merge", RUN, "{root}/adapter", "--out", RUN], "already holds a run"),
    (["lora", "merge", RUN, "{root}/adapter", "--out", "r", "--scale", "nan"], "--scale must be a finite number"),
    (["lora"], "the following arguments are required"),
    # distill
    (["distill", "{root}/learned", "--steps", "4", "--out", "r"], "learns its variance"),
    (["distill", "{root}/adapter", "--steps", "4", "--out", "r"], "is a LoRA run"),
    (["distill", RUN, "--steps", "3", "--out", "r"], "--steps 3 cannot be reached from 32 steps by halving"),
    (["distill", RUN, "--steps", "0", "--out", "r"], "--steps must be a whole number >= 1"),
    (["distill", RUN, "--steps", "48", "--from-steps", "96", "--out", "r"], "are not nested"),
    (["distill", RUN, "--steps", "4", "--from-steps", "1000", "--out", "r"], "--from-steps must be between 2 and"),
    (["distill", "{root}/student", "--steps", "1", "--from-steps", "8", "--out", "r"], "is a student made for 2"),
    (["distill", RUN, "--steps", "4", "--out", RUN], "already holds a run that is not a distillation"),
    (["distill", RUN, "--steps", "2", "--from-steps", "8", "--out", "{root}/student"], "holds another distillation"),
    (["distill", RUN, "--steps", "4", "--out", "{root}/empty", "--resume"], "holds no distillation to continue"),
    (["distill", RUN, "--steps", "4", "--out", "{root}/userfiles"], "holds files that are not part of a ddpmkit run"),
    (["distill", RUN, "--steps", "4", "--out", "{root}/afile"], "is a file, not a folder"),
    (["distill", RUN, "--steps", "4", "--out", ""], "an empty path would write into the current folder"),
    (["distill", RUN, "--steps", "4", "--out", "r", "--lr", "0"], "--lr must be a finite number > 0"),
    (["distill", RUN, "--steps", "4", "--out", "r", "--iters-per-round", "0"], "--iters-per-round must be"),
    (["distill", RUN, "--steps", "4", "--out", "r", "--precision", "fp16"], "invalid choice: 'fp16'"),
    (["distill", "{root}/missing", "--steps", "4", "--out", "r"], "does not exist"),
    (["distill", "{root}/foreign", "--steps", "4", "--out", "r"], "not a ddpmkit checkpoint"),
    (["distill", RUN, "--out", "r"], "the following arguments are required: --steps"),
    (["sample", "{root}/student", "--sampler", "unipc"], "is a distilled student made for DDIM (eta 0) over 2"),
    (["sample", "{root}/student", "--steps", "4"], "is a distilled student made for DDIM (eta 0) over 2"),
    (["eval", "{root}/student"], "is a distilled student made for DDIM (eta 0) over 2"),
    # data
    (["data", "show", "imagenet"], "imagenet"),
    (["data", "fetch", "imagenet"], "imagenet"),
    (["data", "show", "digits", "--out", "{root}/afile/x.png"], "is a file, not a folder"),
    (["data", "show", "digits", "--split", "dev"], "invalid choice: 'dev'"),
    (["data", "show", "digits", "--num", "0"], "--num must be at least 1"),
    (["data", "show", "digits", "--out", "{root}/grid.txt"], "not a picture format"),
    (["data", "show", "folder:{root}/empty"], "no image files"),
    (["data"], "the following arguments are required"),
    # demo (checked before any server starts, Gradio or not)
    (["demo", "{root}/missing"], "does not exist"),
    (["demo", "{root}/empty"], "no checkpoint found"),
    (["demo", RUN, "--port", "0"], "--port must be from 1 to 65535"),
    (["demo", RUN, "--port", "http"], "invalid int value"),
    (["demo", RUN, "--host", "192.0.2.1"], "cannot serve on 192.0.2.1"),
    (["demo", RUN, "--precision", "fp8"], "invalid choice: 'fp8'"),
    (["demo"], "the following arguments are required: run"),
    # editing: inpaint, img2img, interpolate (all checked before the weights are read)
    (["img2img", RUN, "--image", "{root}/edit/grey.png", "--strength", "1.5"], "--strength must be in [0, 1]"),
    (["img2img", RUN, "--image", "{root}/edit/small.png", "--strength", "0.5"], "is 8×8 but the run draws 16×16"),
    (["img2img", RUN, "--image", "{root}/edit/red.png", "--strength", "0.5"], "is in colour but the run draws grey"),
    (["img2img", RUN, "--image", "{root}/afile", "--strength", "0.5"], "is not an image Pillow can read"),
    (["img2img", RUN, "--image", "digits:train:x", "--strength", "0.5"], "the index must be a whole number"),
    (["img2img", RUN, "--image", "{root}/edit/grey.png"], "the following arguments are required: --strength"),
    (["inpaint", RUN, "--image", "{root}/edit/grey.png", "--mask", "{root}/edit/small.png"],
     "draw the mask at the image's size"),
    (["inpaint", RUN, "--image", "{root}/edit/grey.png", "--mask", "{root}/edit/soft.png"],
     "--mask is not binary (it has grey pixels"),
    (["inpaint", RUN, "--image", "{root}/edit/grey.png", "--mask", "{root}/edit/empty.png"], "the mask is empty"),
    (["inpaint", RUN, "--image", "{root}/edit/grey.png", "--mask", "{root}/edit/full.png"],
     "the mask covers the whole image"),
    (["inpaint", RUN, "--image", "{root}/edit/grey.png", "--mask", "center", "--sampler", "dpm++2m", "--resample",
      "5"], "needs a one-step sampler"),
    (["inpaint", RUN, "--image", "{root}/edit/grey.png", "--mask", "center", "--jump-length", "0"],
     "the jump length must be a whole number >= 1"),
    (["inpaint", RUN, "--image", "{root}/edit/grey.png", "--mask", "center", "--label", "3"],
     "is an unconditional run: --label needs a class-conditional model"),
    (["interpolate", RUN, "--image", "{root}/edit/grey.png"], "give --image twice"),
    (["interpolate", RUN, "--image", "{root}/edit/grey.png", "--image", "digits:train:1", "--sampler", "ddpm"],
     "interpolation inverts and draws with DDIM"),
    # presets and the command itself
    (["presets", "extra"], "unrecognized arguments: extra"),
    (["nonsense"], "invalid choice: 'nonsense'"),
]


def snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under root, with a hash of each file's bytes."""
    state = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        state[key] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
    return state


ENV = re.compile(r"^[A-Z_][A-Z0-9_]*=")  # a case's leading NAME=value words set the environment of its command


def split_env(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    words = list(argv)
    env = {}
    while words and ENV.match(words[0]):
        name, _, value = words.pop(0).partition("=")
        env[name] = value
    return env, words


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    env, argv = split_env(argv)
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    out, err = io.StringIO(), io.StringIO()
    try:
        with redirect_stdout(out), redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as exc:  # argparse exits by itself
                code = exc.code
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return code, out.getvalue(), err.getvalue()


ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
CATALOGUE = ROOT / "docs" / "errors.md"  # the catalogue's page; the README links to it
BEGIN = "<!-- bad-input catalogue: written by `python tests/test_bad_input.py` from its table; do not edit -->"
END = "<!-- end of the bad-input catalogue -->"
INTRO = """# Errors: every bad input and its one line

Bad input to any `ddpmkit` command (an unknown name, a hash mismatch, an empty folder, a path that is not CIFAR,
an unknown `--set` key or a value of the wrong type, `--resume` with no checkpoint, a truncated or foreign
checkpoint, a checkpoint from another model config, an output path under a file, ...) is found before any work
starts and reported as **one line on stderr with exit status 2**, no traceback, that names the problem and the
fix. Nothing is written: no file is created, changed or removed, and an existing run folder is left byte-for-byte
unchanged.

The table below is that catalogue. `tests/test_bad_input.py` runs every row and checks exactly the above, and that
each message is the one shown here; `python tests/test_bad_input.py` rewrites the table from the test's list (the
test fails when they differ). In the commands, `RUN` is a trained run, `cond` a class-conditional one, and
`--preset tiny` stands for `--preset tiny --data digits --set data.image_size=16 --no-progress --device cpu` (the
test's small model, for speed). A command may begin with environment settings (`DDPMKIT_CACHE=afile ddpmkit …`);
`afile` is a file, `userfiles` a folder of the user's own files, `resized` a checkpoint holding the weights of
another model size, `adapter` a LoRA run, `learned` a run that learns its variance, `student` RUN distilled to two
DDIM steps. Hashes and LoRA fingerprints (`sha256:…`) vary by machine and are shortened.

"""


def resolve(argv: list[str], root: Path) -> list[str]:
    return [a.replace(RUN, str(root / "run")).replace("{root}", str(root)) for a in argv]


def shell_word(word: str) -> str:
    """A word as a shell needs it typed: quoted when empty or holding spaces, brackets, quotes or the like."""
    return shlex.quote(word) if not word or re.search(r"[\s\[\]'\"*?;&|<>()$`\\!]", word) else word


def catalogue_row(argv: list[str], message: str, root: Path) -> str:
    """One catalogue row: the command as a user types it (RUN a trained run) -> the message, paths shortened."""
    env, argv = split_env(argv)
    command = " ".join(map(shell_word, argv)).replace(" ".join(TINY), "--preset tiny").replace(RUN, "RUN")
    words = [*(f"{k}={shell_word(v)}" for k, v in env.items()), "ddpmkit", command]
    command = " ".join(words).replace("{root}/", "")
    message = message.replace(str(root / "run"), "RUN").replace(f"{root}/", "").replace(str(root), ".")
    message = message.split("error: ", 1)[-1]
    message = re.sub(r"sha256:[0-9a-f]{12}", "sha256:…", message)  # fingerprints of trained weights vary by machine
    return f"| `{command}` | {message.replace('|', chr(92) + '|')} |"


def catalogue_rows() -> list[str]:
    text = CATALOGUE.read_text() if CATALOGUE.exists() else ""
    assert BEGIN in text and END in text, "docs/errors.md lacks the catalogue: run python tests/test_bad_input.py"
    section = text.split(BEGIN, 1)[1].split(END, 1)[0]
    return [line for line in section.splitlines() if line.startswith("| `")]


def test_catalogue_is_large():
    assert len(CASES) >= 30 and {c[0][0] for c in CASES} >= {"train", "sample", "eval", "data", "demo", "lora",
                                                             "distill", "presets"}


@pytest.mark.parametrize(("argv", "expected"), CASES, ids=[" ".join(a)[:60] for a, _ in CASES])
def test_bad_input(workspace, monkeypatch, argv, expected):
    monkeypatch.chdir(workspace)
    before = snapshot(workspace)
    code, out, err = run_cli(resolve(argv, workspace))
    assert code == 2, (code, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "error:" in lines[0] and "Traceback" not in err
    assert expected in lines[0], lines[0]
    assert out == ""
    assert snapshot(workspace) == before, "bad input changed files"
    assert catalogue_row(argv, lines[0], workspace) in catalogue_rows(), "docs/errors.md is stale: regenerate it"


def test_errors_page_lists_the_whole_catalogue_in_order():
    shown = [row.split(" | ")[0] for row in catalogue_rows()]
    assert shown == [catalogue_row(argv, "", Path("/x")).split(" | ")[0] for argv, _ in CASES]


def test_readme_links_the_catalogue():
    assert "(docs/errors.md)" in README.read_text(), "the README should link the bad-input catalogue, docs/errors.md"


if __name__ == "__main__":  # rewrite docs/errors.md's catalogue from the table: python tests/test_bad_input.py
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        root = make_workspace(Path(tmp))
        os.chdir(root)
        rows = []
        for argv, _ in CASES:
            code, _, err = run_cli(resolve(argv, root))
            assert code == 2, (argv, err)
            rows.append(catalogue_row(argv, err.strip().splitlines()[0], root))
    table = "\n".join(["| input | message (stderr, exit status 2) |", "|---|---|", *rows])
    text = CATALOGUE.read_text() if CATALOGUE.exists() else ""
    if BEGIN in text and END in text:  # keep what surrounds the table
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
    else:
        head, tail = INTRO, "\n"
    CATALOGUE.parent.mkdir(exist_ok=True)
    CATALOGUE.write_text(f"{head}{BEGIN}\n{table}\n{END}{tail}")
    print(f"{len(rows)} rows written to {CATALOGUE}")
