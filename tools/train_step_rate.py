"""Steps per second of the mnist preset's training loop alone (no grids, checkpoints or TensorBoard), in this
process: 20 warm-up steps, then 100 timed. Run it with PYTHONPATH=TREE/src to time one source tree; alternate trees
to compare them (tools/compare_trees.py times whole commands).

    for t in /tmp/before .; do PYTHONPATH=$t/src python tools/train_step_rate.py; done
"""

import json
import tempfile
import time

from ddpmkit.presets import load_preset
from ddpmkit.training import Trainer

cfg = load_preset("mnist")
cfg.override(["train.steps=2600", "train.sample_every=100000", "train.checkpoint_every=100000",
              "train.tensorboard=false"])
with tempfile.TemporaryDirectory() as d:
    t = Trainer(cfg, d + "/run", progress=False, hooks=[])
    t.fit(until=20)  # warm up
    start = time.perf_counter()
    t.fit(until=120)
    print("RESULT", json.dumps({"steps_per_s": 100 / (time.perf_counter() - start)}))
