#!/usr/bin/python3
"""PyTorch (CPU, float32) training-step benchmark on the reference model of tests/reference/ref_model.py.

  /usr/bin/python3 bench/bench_train_torch.py --config CFG.json --seq T --batch B --steps N --threads P

One step = forward of a [B,T] token batch (fixed seed), loss = L_main + lambda/D * sum_k L_mtp^k with
lambda = 0.3, backward, torch.optim.AdamW(lr=1e-3, weight_decay=0.1). Random init N(0, 0.02), norms 1,
router bias 0 (not trained). 2 warm-up steps, then N timed steps. Prints one JSON line:
  {"impl": "pytorch", "ms_per_step": ..., "tokens_per_s": ..., "params": ..., ...}
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "reference"))
import ref_model as R  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True, help="config.json path (or a name in tests/reference/configs)")
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--lam", type=float, default=0.3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--warmup", type=int, default=2)
    args = ap.parse_args()

    path = args.config
    if not os.path.exists(path):
        alt = os.path.join(HERE, "..", "tests", "reference", "configs", path + ("" if path.endswith(".json") else ".json"))
        if os.path.exists(alt):
            path = alt
    cfg = json.load(open(path))
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    W = R.init_params(cfg, seed=args.seed, std=0.02, dtype=np.float32)
    model = R.Model(cfg, W, dtype=torch.float32, requires_grad=True)
    params = list(model.trainable().values())
    nparams = int(sum(p.numel() for p in params))
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.1)
    rng = np.random.default_rng(args.seed + 1)
    tok = torch.from_numpy(rng.integers(0, cfg["vocab_size"], size=(args.batch, args.seq)).astype(np.int64))

    def step():
        opt.zero_grad(set_to_none=True)
        loss = model.loss(tok, args.lam)
        loss.backward()
        opt.step()
        return float(loss.detach())

    first = None
    for _ in range(args.warmup):
        v = step()
        first = v if first is None else first
    t0 = time.perf_counter()
    last = first
    for _ in range(args.steps):
        last = step()
    dt = time.perf_counter() - t0
    ms = 1000.0 * dt / max(args.steps, 1)
    print(json.dumps({
        "impl": "pytorch",
        "ms_per_step": round(ms, 3),
        "tokens_per_s": round(args.batch * args.seq / (ms / 1000.0), 1),
        "params": nparams,
        "config": os.path.basename(path),
        "seq": args.seq, "batch": args.batch, "steps": args.steps, "threads": args.threads,
        "torch": torch.__version__,
        "loss_first": first, "loss_last": last,
    }))


if __name__ == "__main__":
    main()
