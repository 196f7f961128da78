#!/usr/bin/python3
"""Stand-in for the `mtp` CLI (init / logits / grad), built on the float32 reference model.

Used only to test test_parity.py itself before (or besides) the C++ binary:
  /usr/bin/python3 tests/reference/test_parity.py --mtp "/usr/bin/python3 tests/reference/fake_mtp.py" --work /tmp/p
FAKE_MTP_BUG=<name> injects a deliberate error so the driver can be seen to fail:
  concat   swap the [emb | h] halves of the MTP concat      nogroup  ignore group-limited routing
  extra    write an extra gradient tensor                     missing  drop one gradient tensor
  noise    perturb one gradient by 1e-3 relative              crash    exit 3 in `grad`
"""
import argparse
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ref_model as R  # noqa: E402
import st  # noqa: E402

BUG = os.environ.get("FAKE_MTP_BUG", "")


def load_model(d):
    cfg = json.load(open(os.path.join(d, "config.json")))
    W = st.load(os.path.join(d, "model.safetensors"))
    if BUG == "nogroup":
        cfg = dict(cfg, n_group=1, topk_group=1)
    if BUG == "concat":
        L = cfg["num_hidden_layers"]
        dm = cfg["hidden_size"]
        for k in range(1, R.num_mtp(cfg) + 1):
            n = f"model.layers.{L + k - 1}.eh_proj.weight"
            if n in W:  # parallel heads have none
                W[n] = np.concatenate([W[n][:, dm:], W[n][:, :dm]], axis=1)
    return cfg, W


def toks(s):
    return np.array([int(t) for t in s.split(",")], dtype=np.int64)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("init")
    a.add_argument("--config", required=True)
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--out", required=True)
    for c in ("logits", "grad"):
        a = sub.add_parser(c)
        a.add_argument("--model", required=True)
        a.add_argument("--tokens", required=True)
        a.add_argument("--out", required=True)
        if c == "grad":
            a.add_argument("--mtp-lambda", type=float, default=0.3)
    args = ap.parse_args()

    if args.cmd == "init":
        cfg = json.load(open(args.config))
        os.makedirs(args.out, exist_ok=True)
        json.dump(cfg, open(os.path.join(args.out, "config.json"), "w"), indent=2)
        W = R.init_params(cfg, seed=args.seed, include_copies=True)
        st.save(os.path.join(args.out, "model.safetensors"), W, metadata={"format": "pt"})
    elif args.cmd == "logits":
        cfg, W = load_model(args.model)
        logits, mtp = R.forward(cfg, W, toks(args.tokens), dtype=torch.float32)
        out = {"logits": logits.numpy()}
        for k, m in enumerate(mtp, start=1):
            out[f"mtp.{k}.logits"] = m.numpy()
        st.save(args.out, out)
    else:
        if BUG == "crash":
            print("fake_mtp: injected crash", file=sys.stderr)
            sys.exit(3)
        cfg, W = load_model(args.model)
        L, G = R.loss_and_grads(cfg, W, toks(args.tokens), args.mtp_lambda, dtype=torch.float32)
        G = {n: g.astype(np.float32) for n, g in G.items()}
        if BUG == "extra":
            G["model.layers.0.mlp.gate.e_score_correction_bias"] = np.zeros(4, np.float32)
        if BUG == "missing":
            G.pop("model.norm.weight")
        if BUG == "noise":
            G["lm_head.weight"] = G["lm_head.weight"] * np.float32(1.001)
        G["loss"] = np.array([L], np.float32)
        st.save(args.out, G)


if __name__ == "__main__":
    main()
