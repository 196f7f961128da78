#!/usr/bin/python3
"""Deliberately broken builds: each mutant changes one line of the engine, rebuilds `mtp` in build-mut/ and runs
the tests that must catch it; a mutant that every one of its tests passes is reported as SURVIVED.

  /usr/bin/python3 scripts/mutants.py [--list] [NAME ...]

The source file is restored from a copy after each mutant (also on Ctrl-C or an error), so the work tree ends as
it started; do not edit the mutated files while it runs. Not part of CI: one rebuild per mutant (10 s to 1 min).
Prints one line per mutant and `N caught, M survived`; exit 1 if any survived.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.path.join(ROOT, "build-mut")
PY = "/usr/bin/python3"

TRAIN_REF = [PY, "tests/train/train_ref_test.py", "{mtp}", "{work}"]
PARITY = [PY, "tests/reference/test_parity.py", "--mtp", "{mtp}", "--work", "{work}"]
GENERATE = [PY, "tests/infer/generate_cli_test.py", "{mtp}", "{work}"]
SERVE = [PY, "tests/serve/serve_test.py", "{mtp}", "{work}"]
MPI = [PY, "tests/train/mpi_test.py", "{mtp}", "{work}"]

# name, file, [(exact text, replacement)], tests that must fail
MUTANTS = [
    ("adamw_no_bias_correction", "src/train/adamw.cpp",
     [("const float bc1 = 1.0f - std::pow(cfg.beta1, float(st.step));", "const float bc1 = 1.0f;"),
      ("const float bc2 = 1.0f - std::pow(cfg.beta2, float(st.step));", "const float bc2 = 1.0f;")], [TRAIN_REF]),
    ("adamw_decay_on_norms", "src/train/adamw.cpp",
     [("p.decay ? 1.0f - lr * cfg.weight_decay : 1.0f", "1.0f - lr * cfg.weight_decay")], [TRAIN_REF]),
    ("clipping_off", "src/train/trainer.cpp",
     [("if (tc.grad_clip > 0 && gnorm > tc.grad_clip) {", "if (false) {")], [TRAIN_REF]),
    ("accumulation_weight_1_over_B", "src/train/trainer.cpp",
     [("const float w = 1.0f / float(A * B);", "const float w = 1.0f / float(B);")], [TRAIN_REF]),
    ("bias_update_sign_flipped", "src/train/trainer.cpp",
     [("(mean - ld[e]) > 0 ? 1.0", "(mean - ld[e]) > 0 ? -1.0")], [TRAIN_REF]),
    ("warmup_off_by_one", "src/train/train_config.cpp",
     [("return c.lr * (step + 1) / c.warmup_steps;", "return c.lr * (step + 2) / c.warmup_steps;")], [TRAIN_REF]),
    ("lambda_schedule_ignored", "src/train/train_config.cpp",
     [("if (step >= s) v = x;", "(void)s, (void)x;")], [TRAIN_REF]),
    ("balance_factor_wrong", "src/model/ffn.cpp",
     [("float(double(E) / (double(K) * T)", "float(1.0 / (double(K) * T)")], [TRAIN_REF]),
    ("balance_gradient_doubled", "src/model/ffn.cpp",
     [("double cst = double(alpha) * bal_scale / T;", "double cst = 2.0 * double(alpha) * bal_scale / T;")],
     [TRAIN_REF]),
    ("yarn_no_interpolation", "src/model/rope.cpp",
     [("f[i] = f[i] / y.factor * r + f[i] * (1.0 - r);", "f[i] = f[i] + 0.0 * r;")], [PARITY]),
    ("eos_not_stopping_cli", "src/infer/speculative.cpp",
     [("if (buf[i] == stop_id) { keep = i + 1; stop = true; break; }", "(void)i;")], [GENERATE]),
    ("eos_not_stopping_http", "src/serve/server.cpp", [("if (id == eos) {", "if (false) {")], [SERVE]),
    ("dp_gradients_not_reduced", "src/train/data_parallel.cpp",
     [("        comm_allreduce_sum(G.data(), G.size());\n        return;", "        return;")], [MPI]),
    ("zero1_weights_not_gathered", "src/train/data_parallel.cpp",
     [("if (p.zero1) comm_allgather(W.data(), p.counts);", "(void)p.counts;")], [MPI]),
    ("dp_expert_load_not_reduced", "src/train/trainer.cpp",
     [("            comm_allreduce_sum(load.data(), load.size());\n", "")], [MPI]),
    ("ep_owner_runs_the_wrong_expert", "src/model/expert_parallel.cpp",
     [("        const int e = p.me * p.El + j;\n        swiglu_forward(", "        const int e = j;\n        swiglu_forward(")],
     [MPI]),
    ("ep_backward_skipped", "src/model/expert_parallel.cpp",
     [("        swiglu_backward(W, G, l.experts[size_t(e)], m.experts[size_t(e)], dxr + o * d, dyr + o * d, d, a);",
       "        (void)e, (void)o;")], [MPI]),
    ("disconnect_not_honoured", "src/serve/server.cpp",
     [("while (!end && !j.cancelled) {", "while (!end) {")], [SERVE]),
]


def sh(cmd, **kw):
    return subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def build():
    if not os.path.exists(os.path.join(BUILD, "build.ninja")):
        p = sh(["cmake", "-S", ".", "-B", BUILD, "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release"])
        if p.returncode:
            sys.exit("cmake failed:\n" + p.stdout[-2000:])
    return sh(["ninja", "-C", BUILD, "mtp"])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*")
    ap.add_argument("--list", action="store_true")
    args = ap.parse_args()
    if args.list:
        for m in MUTANTS:
            print(m[0])
        return
    chosen = [m for m in MUTANTS if not args.names or m[0] in args.names]
    unknown = set(args.names) - {m[0] for m in MUTANTS}
    if unknown:
        sys.exit(f"unknown mutant(s): {', '.join(sorted(unknown))} (see --list)")
    p = build()
    if p.returncode:
        sys.exit("the unmutated build failed:\n" + p.stdout[-2000:])
    mtp = os.path.join(BUILD, "mtp")
    caught = survived = 0
    for name, rel, edits, tests in chosen:
        path = os.path.join(ROOT, rel)
        keep = tempfile.NamedTemporaryFile(delete=False)
        keep.close()
        shutil.copy2(path, keep.name)
        t0 = time.time()
        try:
            src = open(path).read()
            for old, new in edits:
                if src.count(old) != 1:
                    raise SystemExit(f"{name}: `{old}` occurs {src.count(old)} times in {rel} (update the mutant)")
                src = src.replace(old, new)
            open(path, "w").write(src)
            p = build()
            if p.returncode:
                print(f"{name:<30s} BUILD FAILED\n{p.stdout[-1500:]}")
                survived += 1
                continue
            results = []
            for t in tests:
                work = tempfile.mkdtemp(prefix=f"mutant_{name}_")
                cmd = [c.format(mtp=mtp, work=work) for c in t]
                r = sh(cmd, timeout=900)
                fails = [ln for ln in r.stdout.splitlines() if ln.startswith("FAIL") or " FAIL " in ln]
                results.append((os.path.basename(t[1]), r.returncode, fails[:1]))
                shutil.rmtree(work, ignore_errors=True)
            ok = all(rc != 0 for _, rc, _ in results)
            caught += ok
            survived += not ok
            detail = "; ".join(f"{t} exit {rc}" + (f" ({f[0].strip()[:90]})" if f else "") for t, rc, f in results)
            print(f"{name:<30s} {'caught  ' if ok else 'SURVIVED'} {time.time() - t0:5.0f}s  {detail}", flush=True)
        finally:
            shutil.copy2(keep.name, path)
            os.utime(path)   # newer than the mutated object files: the next build recompiles it
            os.unlink(keep.name)
    build()
    print(f"{caught} caught, {survived} survived")
    sys.exit(1 if survived else 0)


if __name__ == "__main__":
    main()
