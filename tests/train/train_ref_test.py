#!/usr/bin/python3
"""Training steps of `mtp train` against an independent PyTorch reference (float64), as llm.c's test_gpt2.c
checks its optimizer steps.

  /usr/bin/python3 tests/train/train_ref_test.py MTP_BINARY WORK_DIR

The same initial weights (`mtp init`, then realistic weights written back), the same batches (the trainer's test
hook MTP_TRAIN_TEST_DUMP_BATCHES writes every window it draws) and the same hyper-parameters run for 12 optimizer
steps in `mtp train --init-model` and here. Everything the trainer does is exercised: AdamW (torch.optim.AdamW)
with the documented no-decay set (norm weights), linear warmup + cosine decay, global-norm clipping (active on
some steps, not on others -- checked), accumulation over 2 micro-batches of 2 sequences, a λ schedule, the
sequence-wise balance loss (α > 0) on every MoE layer including the MTP modules', and the auxiliary-loss-free
router-bias updates (γ > 0) after each step. Model: MoE with group-limited sigmoid routing, a shared expert,
q-LoRA, D = 2 MTP modules.

Compared per step: the total loss, the main / per-depth MTP / balance losses, the learning rate, λ and the
gradient norm (before clipping); at the end every tensor of the final model (router biases included).
Tolerances (their source): one forward/backward pass of the engine agrees with the float64 reference to
~1e-7 relative in the loss and ≤ 6e-5 per gradient tensor (tests/reference/test_parity.py on realistic weights:
fp32 accumulation over reductions of length ≤ ~10^3). Over 12 Adam steps these errors do not grow much: Adam
normalises each update by its own running RMS, so a relative gradient error ε moves an update by ≲ ε·lr. Hence
losses and λ/lr within 1e-5 relative, gradient norms within 1e-4, and each final tensor's change from its initial
value (w_T - w_0) within 1e-3 relative (an update-level error of 1e-4 summed over 12 steps with margin). The
router biases move in steps of ±γ, so they must match exactly up to fp32 rounding (1e-6 absolute).
Prints one line per check and `N passed, M failed`; exit 1 on failure.
"""
import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "reference"))
sys.path.insert(0, HERE)
import ref_model as R  # noqa: E402
import st  # noqa: E402
import test_parity as TP  # noqa: E402
from markov_data import make_dataset  # noqa: E402
from report import check, finish  # noqa: E402

V = 64
MODEL = {"vocab_size": V, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
         "intermediate_size": 48, "moe_intermediate_size": 16, "n_routed_experts": 8, "n_shared_experts": 1,
         "num_experts_per_tok": 2, "n_group": 2, "topk_group": 1, "first_k_dense_replace": 1, "moe_layer_freq": 1,
         "scoring_func": "sigmoid", "topk_method": "noaux_tc", "norm_topk_prob": True, "routed_scaling_factor": 2.0,
         "kv_lora_rank": 16, "q_lora_rank": 24, "qk_nope_head_dim": 8, "qk_rope_head_dim": 4, "v_head_dim": 8,
         "max_position_embeddings": 64, "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "num_nextn_predict_layers": 2,
         "tie_word_embeddings": False, "bos_token_id": 0, "eos_token_id": 1}
HP = {"batch_size": 2, "grad_accum": 2, "seq_len": 16, "max_steps": 12, "warmup_steps": 3, "lr": 3e-3,
      "min_lr": 3e-4, "beta1": 0.9, "beta2": 0.95, "eps": 1e-8, "weight_decay": 0.1, "grad_clip": 2.7,
      "mtp_lambda_schedule": "0:0.3,6:0.1", "bias_update_speed": 0.01, "bal_alpha": 0.01, "seed": 7}
TOL_LOSS, TOL_GNORM, TOL_DELTA, TOL_BIAS = 1e-5, 1e-4, 1e-3, 1e-6



# -- the reference: written from docs/user_guide.md (training options) and the spec, not from the engine -------
def lr_at(step):
    """Linear warmup over warmup_steps (step s < W: lr·(s+1)/W), then cosine from lr to min_lr at max_steps."""
    W, N, lr, lo = HP["warmup_steps"], HP["max_steps"], HP["lr"], HP["min_lr"]
    if step < W:
        return lr * (step + 1) / W
    p = min(1.0, (step - W) / max(1, N - W))
    return lo + 0.5 * (lr - lo) * (1.0 + math.cos(math.pi * p))


def lam_at(step):
    """Piecewise-constant λ: the value of the last STEP:VALUE entry with STEP <= step."""
    val = None
    for part in HP["mtp_lambda_schedule"].split(","):
        s, v = part.split(":")
        if int(s) <= step:
            val = float(v)
    return val


def balance_loss(cfg, terms):
    """Σ over MoE layers of α Σ_e f_e P_e; f_e = E/(K T) Σ_t 1(e ∈ idx_t) (a constant), P_e = mean_t s_e/Σ_j s_j."""
    E, K = int(cfg["n_routed_experts"]), int(cfg["num_experts_per_tok"])
    total = 0.0
    for _, s, idx in terms:
        T = s.shape[0]
        counts = torch.bincount(idx.reshape(-1), minlength=E).to(s.dtype)
        f = E / (K * T) * counts
        P = (s / s.sum(-1, keepdim=True)).mean(0)
        total = total + HP["bal_alpha"] * (f * P).sum()
    return total


def reference_run(cfg, W0, batches):
    """batches [steps, A, B, T] -> per-step records and the final weights (float64)."""
    train = R.trainable_names(cfg)
    P = {n: torch.tensor(np.asarray(W0[n], np.float64), requires_grad=True) for n in train}
    bias = {n: torch.tensor(np.asarray(W0[n], np.float64)) for n in W0 if n.endswith("e_score_correction_bias")}
    decay = [P[n] for n in train if not R.is_norm_name(n)]
    no_decay = [P[n] for n in train if R.is_norm_name(n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": HP["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=HP["lr"], betas=(HP["beta1"], HP["beta2"]), eps=HP["eps"])
    E = int(cfg["n_routed_experts"])
    D = R.num_mtp(cfg)
    base = {n: np.asarray(W0[n]) for n in W0}
    recs = []
    steps, A, B, _ = batches.shape
    for step in range(steps):
        lr, lam = lr_at(step), lam_at(step)
        opt.zero_grad()
        load = {}
        tot = {"loss": 0.0, "main": 0.0, "bal": 0.0, "mtp": [0.0] * D}
        w = 1.0 / (A * B)
        for a in range(A):
            for b in range(B):
                model = R.Model(cfg, base)
                model.P.update(P)
                model.P.update(bias)
                model.route_terms = []
                tok = torch.as_tensor(batches[step, a, b][None, :].astype(np.int64))
                logits, mtp = model.forward(tok)
                main = R.loss_from_logits(tok, logits, [], 0.0)
                ce = [torch.nn.functional.cross_entropy(mtp[k][0, : tok.shape[1] - k - 2], tok[0, k + 2:])
                      for k in range(D)]
                bal = balance_loss(cfg, model.route_terms)
                L = main + (lam / D) * sum(ce) + bal
                (L * w).backward()
                tot["loss"] += float(L) * w
                tot["main"] += float(main) * w
                tot["bal"] += float(bal) * w
                for k in range(D):
                    tot["mtp"][k] += float(ce[k]) * w
                for layer, _, idx in model.route_terms:
                    load[layer] = load.get(layer, 0) + torch.bincount(idx.reshape(-1), minlength=E).double()
        gnorm = math.sqrt(sum(float((p.grad ** 2).sum()) for p in P.values()))
        if HP["grad_clip"] > 0 and gnorm > HP["grad_clip"]:
            for p in P.values():
                p.grad.mul_(HP["grad_clip"] / gnorm)
        for g in opt.param_groups:
            g["lr"] = lr
        opt.step()
        # auxiliary-loss-free balancing after the step: bias_e += γ sign(mean load - load_e), per MoE layer
        for layer, ld in load.items():
            n = f"model.layers.{layer}.mlp.gate.e_score_correction_bias"
            bias[n] = bias[n] + HP["bias_update_speed"] * torch.sign(ld.mean() - ld)
        recs.append(dict(tot, lr=lr, **{"lambda": lam}, grad_norm=gnorm, clipped=gnorm > HP["grad_clip"]))
    final = {n: P[n].detach().numpy() for n in P}
    final.update({n: bias[n].numpy() for n in bias})
    return recs, final


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    nb = np.linalg.norm(b)
    return np.linalg.norm(a - b) / nb if nb > 0 else np.linalg.norm(a)


def main():
    mtp, work = sys.argv[1], os.path.abspath(sys.argv[2])
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    torch.set_num_threads(2)
    data = os.path.join(work, "data")
    make_dataset(data, V)
    cfg_path = os.path.join(work, "model.json")
    json.dump(MODEL, open(cfg_path, "w"))
    init = os.path.join(work, "init")
    subprocess.run([mtp, "init", "--config", cfg_path, "--seed", "5", "--out", init], check=True,
                   stdout=subprocess.DEVNULL)
    mfile = os.path.join(init, "model.safetensors")
    W0, meta = st.load(mfile, with_metadata=True)
    W0 = TP.realistic(MODEL, W0, 11)
    st.save(mfile, W0, metadata=meta)

    run = os.path.join(work, "run")
    dump = os.path.join(work, "batches.i32")
    args = [mtp, "train", "--init-model", init, "--data", data, "--out-dir", run, "--eval-every", "0",
            "--eval-batches", "1", "--sample-tokens", "0", "--ckpt-every", "0", "--threads", "2", "--plot", "false",
            "--progress", "false", "--log-every", "100"]
    for k, v in HP.items():
        args += ["--" + k.replace("_", "-"), str(v)]
    p = subprocess.run(args, env=dict(os.environ, MTP_TRAIN_TEST_DUMP_BATCHES=dump), capture_output=True,
                       text=True, timeout=600)
    check("mtp train runs", p.returncode == 0, (p.stdout + p.stderr)[-800:] if p.returncode else "")
    if p.returncode != 0:
        return
    S, A, B, T = HP["max_steps"], HP["grad_accum"], HP["batch_size"], HP["seq_len"]
    raw = np.fromfile(dump, dtype=np.int32)
    check("batches dumped", raw.size == S * A * B * T, f"{raw.size} ids for {S}x{A}x{B}x{T}")
    if raw.size != S * A * B * T:
        return
    batches = raw.reshape(S, A, B, T)
    got = [json.loads(ln) for ln in open(os.path.join(run, "metrics.jsonl"))]
    got = [r for r in got if r["type"] == "train"]
    ref, final = reference_run(MODEL, W0, batches)
    check("steps", len(got) == S, f"{len(got)} train records")
    if len(got) != S:
        return

    def worst(key, sub=None):
        errs = []
        for g, r in zip(got, ref):
            a, b = (g[key], r[key]) if sub is None else (g[key][sub], r[key][sub])
            errs.append(abs(a - b) / max(abs(b), 1e-30))
        return max(errs), int(np.argmax(errs)) + 1

    for key, tol in (("loss", TOL_LOSS), ("main", TOL_LOSS), ("bal", TOL_LOSS), ("lr", 1e-12), ("lambda", 1e-12),
                     ("grad_norm", TOL_GNORM)):
        e, at = worst(key)
        check(f"per-step {key}", e <= tol, f"max rel err {e:.2e} (step {at}; tol {tol:g})")
    for k in range(R.num_mtp(MODEL)):
        e, at = worst("mtp", k)
        check(f"per-step mtp{k + 1} loss", e <= TOL_LOSS, f"max rel err {e:.2e} (step {at}; tol {TOL_LOSS:g})")
    clipped = [r["clipped"] for r in ref]
    check("clipping exercised", any(clipped) and not all(clipped),
          f"{sum(clipped)}/{len(clipped)} steps clipped at {HP['grad_clip']} "
          f"(grad norms {min(r['grad_norm'] for r in ref):.2f}..{max(r['grad_norm'] for r in ref):.2f})")
    print("step  loss (mtp.cpp)   loss (reference)  grad norm (mtp.cpp / reference)")
    for i, (g, r) in enumerate(zip(got, ref), 1):
        print(f"{i:4d}  {g['loss']:.8f}       {r['loss']:.8f}        {g['grad_norm']:.6f} / {r['grad_norm']:.6f}")

    W = st.load(os.path.join(run, "model", "model.safetensors"))
    deltas, biases, missing = [], [], []
    for n in final:
        if n not in W:
            missing.append(n)
            continue
        if n.endswith("e_score_correction_bias"):
            biases.append((n, float(np.max(np.abs(W[n] - final[n])))))
        else:
            deltas.append((n, rel(W[n].astype(np.float64) - W0[n], final[n] - W0[n])))
    check("final tensors present", not missing, ", ".join(missing[:4]))
    n, e = max(deltas, key=lambda x: x[1])
    check("final weights: w_T - w_0 per tensor", e <= TOL_DELTA, f"{len(deltas)} tensors, worst {e:.2e} ({n}; tol {TOL_DELTA:g})")
    moved = sum(float(np.max(np.abs(final[n] - W0[n]))) > 0 for n, _ in biases)
    n, e = max(biases, key=lambda x: x[1])
    check("final router biases", e <= TOL_BIAS and moved == len(biases),
          f"{len(biases)} layers, {moved} moved, max abs err {e:.1e} ({n}; tol {TOL_BIAS:g})")


if __name__ == "__main__":
    main()
    finish()
