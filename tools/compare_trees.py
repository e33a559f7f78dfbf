"""Before/after speed of two source trees of ddpmkit, measured side by side in one run.

Each measurement runs in a fresh Python process importing ddpmkit from one tree (PYTHONPATH=TREE/src); the trees
alternate (A B B A A B …) so that drift of this shared machine hits both alike. Two things are measured:

- the UNet of ``benchmarks/unet.py``'s two configurations: training images/s (forward, MSE, backward, AdamW) and
  inference images/s (no_grad forward), fp32, median over the repeats of each process;
- the default job cut to N steps: wall time of ``python -m ddpmkit.cli train --steps N`` (data already cached).

    git worktree add /tmp/base HEAD~3          # the "before" tree
    python tools/compare_trees.py /tmp/base . --rounds 3 --train-steps 200

Prints a table and writes docs/experiments/compare_trees.json (``--out``; ``--no-write`` writes nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

UNET_CHILD = r"""
import json, time, statistics, torch, torch.nn.functional as F
torch.manual_seed(0)
from ddpmkit.models import UNet, UNetConfig
configs = {
    "mnist-sized": (UNetConfig(image_size=32, in_channels=1, base_channels=32, channel_mults=(1, 2, 4),
                               num_res_blocks=2, attention_resolutions=(8,), num_heads=4, norm_groups=32), 64, 128),
    "cifar-sized": (UNetConfig(image_size=32, in_channels=3, base_channels=64, channel_mults=(1, 2, 2, 2),
                               num_res_blocks=2, attention_resolutions=(16,), num_heads=4, norm_groups=32), 32, 64),
    "mnist preset": (UNetConfig.named("mnist", num_res_blocks=1), 64, 128),
}
out = {}
for name, (cfg, train_batch, infer_batch) in configs.items():
    model = UNet(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    x = torch.randn(train_batch, cfg.in_channels, cfg.image_size, cfg.image_size)
    t = torch.randint(0, 1000, (train_batch,))
    def train_step():
        loss = F.mse_loss(model(x, t), x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    xi = torch.randn(infer_batch, cfg.in_channels, cfg.image_size, cfg.image_size)
    ti = torch.randint(0, 1000, (infer_batch,))
    def infer():
        with torch.no_grad():
            model(xi, ti)
    for key, fn, batch in (("train", train_step, train_batch), ("infer", infer, infer_batch)):
        fn()
        rates = []
        for _ in range(@REPEATS@):
            start, n = time.perf_counter(), 0
            while time.perf_counter() - start < @MIN_TIME@:
                fn()
                n += 1
            rates.append(n * batch / (time.perf_counter() - start))
        out[name + " " + key] = statistics.median(rates)
print("RESULT " + json.dumps(out))
"""


def run_child(tree: Path, code: str) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def run_train(tree: Path, steps: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "ddpmkit.cli", "train", "--steps", str(steps), "--out", out + "/run",
                        "--no-progress"], env=env, check=True, capture_output=True, text=True)
        return time.perf_counter() - start


def check_tree(tree: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    found = subprocess.run([sys.executable, "-c", "import ddpmkit; print(ddpmkit.__file__)"], env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    if not Path(found).resolve().is_relative_to((tree / "src").resolve()):
        sys.exit(f"compare_trees: PYTHONPATH={tree}/src imports ddpmkit from {found}; install ddpmkit non-editably "
                 "or run from a venv without it")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("before", type=Path)
    ap.add_argument("after", type=Path)
    ap.add_argument("--rounds", type=int, default=3, help="processes per tree for each measurement")
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats per UNet row in each process")
    ap.add_argument("--min-time", type=float, default=1.0, help="seconds per repeat")
    ap.add_argument("--train-steps", type=int, default=200, help="steps of the default job; 0 skips it")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "experiments" / "compare_trees.json")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    trees = {"before": args.before.resolve(), "after": args.after.resolve()}
    for tree in trees.values():
        check_tree(tree)
    code = UNET_CHILD.replace("@REPEATS@", str(args.repeats)).replace("@MIN_TIME@", str(args.min_time))
    samples: dict[str, dict[str, list[float]]] = {"before": {}, "after": {}}
    for r in range(args.rounds):
        order = ["before", "after"] if r % 2 == 0 else ["after", "before"]
        for which in order:
            for key, value in run_child(trees[which], code).items():
                samples[which].setdefault(key + " (img/s)", []).append(value)
            print(f"round {r + 1}: {which} UNet done", flush=True)
        if args.train_steps:
            for which in order:
                seconds = run_train(trees[which], args.train_steps)
                samples[which].setdefault(f"train --steps {args.train_steps} (s)", []).append(seconds)
                print(f"round {r + 1}: {which} train {seconds:.1f} s", flush=True)
    rows = []
    for key in samples["before"]:
        before, after = statistics.median(samples["before"][key]), statistics.median(samples["after"][key])
        faster = after / before if key.endswith("(img/s)") else before / after
        rows.append({"measurement": key, "before": before, "after": after, "after_speed_vs_before": faster,
                     "before_all": samples["before"][key], "after_all": samples["after"][key]})
    print("\n| measurement | before | after | after speed / before |\n|---|---|---|---|")
    for row in rows:
        print(f"| {row['measurement']} | {row['before']:.1f} | {row['after']:.1f} "
              f"| {row['after_speed_vs_before']:.3f} |")
    if not args.no_write:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                    if ln.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
        payload = {"trees": {k: str(v) for k, v in trees.items()}, "cpu": cpu, "threads": os.cpu_count(),
                   "rounds": args.rounds, "rows": rows}
        args.out.write_text(json.dumps(payload, indent=1))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
