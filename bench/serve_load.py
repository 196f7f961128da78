#!/usr/bin/env python3
"""Load benchmark of `mtp serve` on loopback: for concurrency 1, 2, 4, 8, 16, that many clients each send streaming
greedy completions (held-out prompts, fixed lengths) back to back; with and without MTP speculation (the server's
load-adapted draft length), one server per mode, the levels interleaved per mode in one run. Prints per level the
aggregate tokens/s, per-request tokens/s, time to first token p50 / p95 and inter-token latency p50 / p95 (per
token: a chunk of k tokens counts its gap once and k-1 zero gaps), as a markdown table; writes it and a PNG plot.
The ratios (vs c=1, vs plain) are medians of the ratios within each repetition, with their range.
  /usr/bin/python3 bench/serve_load.py build/mtp MODEL --prompt-shard DATA/val_000.bin [--threads 2]
      [--levels 1,2,4,8,16] [--requests 2] [--n-prompt 32] [--n-gen 64] [--weights q8_0] [--out runs/serve_load]
Every request has a timeout; the run is bounded by levels x requests x clients."""
import argparse, http.client, json, os, re, statistics, struct, subprocess, sys, threading, time

from serve_start import start_server

ap = argparse.ArgumentParser()
ap.add_argument("mtp")
ap.add_argument("model")
ap.add_argument("--prompt-shard", required=True, help="token shard from `mtp data prepare` (held-out text)")
ap.add_argument("--levels", default="1,2,4,8,16")
ap.add_argument("--requests", type=int, default=2, help="requests per client per level and repetition")
ap.add_argument("--reps", type=int, default=3, help="repetitions; the table shows the median (the modes alternate)")
ap.add_argument("--n-prompt", type=int, default=32)
ap.add_argument("--n-gen", type=int, default=64)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--weights", default="")
ap.add_argument("--modes", default="none,mtp",
                help="servers to compare, by --spec value; NAME@TAG is a second server of the same kind (an A/A "
                     "control: none,none@b measures what the machine alone makes of two identical servers)")
ap.add_argument("--bin", action="append", default=[], metavar="TAG=PATH",
                help="modes NAME@TAG run the mtp binary at PATH (an A/B of two builds: --modes none,mtp,mtp@old "
                     "--bin old=/tmp/base/build/mtp)")
ap.add_argument("--extra", default="", help="more server flags, space-separated")
ap.add_argument("--out", default="runs/serve_load")
a = ap.parse_args()
levels = [int(x) for x in a.levels.split(",")]
if any("=" not in b for b in a.bin): ap.error("--bin takes TAG=PATH")
bins = dict(b.split("=", 1) for b in a.bin)
os.makedirs(a.out, exist_ok=True)

raw = open(a.prompt_shard, "rb").read()
assert raw[:8] == b"MTPTOKS\0", "not a token shard"
width, count = struct.unpack_from("<I", raw, 12)[0], struct.unpack_from("<Q", raw, 16)[0]
ids = list(struct.unpack_from("<%d%s" % (count, "H" if width == 2 else "I"), raw, 32))
n_req = max(levels) * a.requests
stride = max(1, (len(ids) - a.n_prompt) // max(1, n_req))
prompts = [ids[i * stride: i * stride + a.n_prompt] for i in range(n_req)]


def start(mode):
    spec, _, tag = mode.partition("@")           # NAME@TAG: another server of --spec NAME
    return start_server([bins.get(tag, a.mtp), "serve", "--model", a.model, "--port", "0", "-t", str(a.threads),
                         "--parallel", str(max(levels)), "--spec", spec] + (["--weights", a.weights] if a.weights else [])
                        + a.extra.split())


def one(port, prompt):
    """(ttft s, per-token gaps, tokens, total s) of one streaming greedy completion. The client reads what has
    arrived in large pieces and parses JSON only for the last event (it shares the CPU with the server)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    body = {"prompt": prompt, "max_tokens": a.n_gen, "temperature": 0, "ignore_eos": True, "stream": True,
            "cache_prompt": False}
    t0 = time.time()
    c.request("POST", "/v1/completions", body=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    r = c.getresponse()
    assert r.status == 200, r.read()
    first, last, gaps, buf = None, None, [], b""
    while True:
        piece = r.read1(65536)
        if not piece: break
        now = time.time()
        n = piece.count(b'"text":"') - piece.count(b'"text":""')   # events with text in this read
        if n > 0:
            if first is None:
                first, n = now, n - 1
            elif last is not None:
                gaps.append(now - last)
                n -= 1
            gaps.extend([0.0] * n)
            last = now
        buf = (buf + piece)[-8192:]
        if b"[DONE]" in buf: break
    c.close()
    ev = [e for e in buf.split(b"data: ") if b'"timings"' in e]
    toks = json.loads(ev[-1].split(b"\n\n")[0])["timings"]["predicted_n"] if ev else 0
    return (first or time.time()) - t0, gaps, toks, time.time() - t0


def level(port, conc):
    results, lock = [], threading.Lock()
    def client(ci):
        for k in range(a.requests):
            res = one(port, prompts[(ci * a.requests + k) % len(prompts)])
            with lock: results.append(res)
    t0 = time.time()
    ths = [threading.Thread(target=client, args=(i,)) for i in range(conc)]
    for t in ths: t.start()
    for t in ths: t.join(900)
    wall = time.time() - t0
    toks = sum(r[2] for r in results)
    q = lambda xs, p: sorted(xs)[min(len(xs) - 1, int(p * len(xs)))] if xs else 0
    ttft = [r[0] for r in results]
    itl = [g for r in results for g in r[1]]
    per_req = [r[2] / r[3] for r in results if r[3] > 0]
    return {"conc": conc, "agg": toks / wall, "per_req": statistics.mean(per_req), "ttft50": q(ttft, .5),
            "ttft95": q(ttft, .95), "itl50": q(itl, .5), "itl95": q(itl, .95), "tokens": toks}


modes = a.modes.split(",")
servers = {m: start(m) for m in modes}          # all up at once (idle ones wait on sockets), measured in turn
samples = {}
try:
    for m in modes:
        one(servers[m][1], prompts[0])           # warm-up
    for rep in range(a.reps):
        for conc in levels:
            for m in (modes if rep % 2 == 0 else modes[::-1]):
                r = level(servers[m][1], conc)
                samples.setdefault((m, conc), []).append(r)
                print(f"rep {rep} {m:5s} c={conc:2d}: {r['agg']:8.1f} tok/s aggregate, {r['per_req']:7.1f} per request, "
                      f"TTFT p50 {1e3 * r['ttft50']:.1f} ms", flush=True)
finally:
    for p, port, lines in servers.values():
        p.terminate()
        p.wait(30)
# per (mode, level): the repetition with the median aggregate throughput; the ratios are medians of the ratios
# within each repetition (measured minutes apart at most, back to back for the two modes), with their range: the
# machine's drift between repetitions cancels out of them
rows = {k: sorted(v, key=lambda r: r["agg"])[len(v) // 2] for k, v in samples.items()}
def ratio(num, den):
    rs = sorted(x["agg"] / y["agg"] for x, y in zip(num, den) if y["agg"] > 0) or [0.0]
    return statistics.median(rs), rs[0], rs[-1]

cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
head = (f"model {a.model}; {a.threads} threads; --parallel {max(levels)}; prompts {a.n_prompt} tokens from "
        f"{a.prompt_shard}, {a.n_gen} generated, {a.requests} per client per level; median of {a.reps} repetitions "
        f"(modes alternating); weights {a.weights or 'as stored'}; cpu {cpu}"
        + "".join(f"; @{t}: {p}" for t, p in bins.items()) + "\n\n")
md = head + ("| speculation | concurrency | aggregate tok/s | vs c=1 | (range) | vs plain | (range) | per request tok/s | "
             "TTFT p50 ms | TTFT p95 ms | ITL p50 ms | ITL p95 ms |\n"
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
for (mode, conc), r in sorted(rows.items(), key=lambda kv: (kv[0][0], kv[0][1])):
    v1 = ratio(samples[(mode, conc)], samples[(mode, levels[0])])
    vp = ratio(samples[(mode, conc)], samples[("none", conc)]) if ("none", conc) in samples else (0, 0, 0)
    md += (f"| {mode} | {conc} | {r['agg']:.1f} | {v1[0]:.2f}x | {v1[1]:.2f}-{v1[2]:.2f} | {vp[0]:.2f}x | "
           f"{vp[1]:.2f}-{vp[2]:.2f} | {r['per_req']:.1f} | {1e3 * r['ttft50']:.1f} | "
           f"{1e3 * r['ttft95']:.1f} | {1e3 * r['itl50']:.2f} | {1e3 * r['itl95']:.2f} |\n")
print("\n" + md)
open(os.path.join(a.out, "serve_load.md"), "w").write(md)
dat = os.path.join(a.out, "serve_load.dat")
with open(dat, "w") as f:
    for mode in a.modes.split(","):
        f.write(f"# {mode}\n")
        for conc in levels:
            r = rows[(mode, conc)]
            f.write(f"{conc} {r['agg']:.3f} {r['per_req']:.3f} {1e3 * r['ttft50']:.3f} {1e3 * r['itl50']:.3f}\n")
        f.write("\n\n")
png = os.path.join(a.out, "serve_load.png")
gp = f"""set terminal pngcairo size 1100,420 font ',10' noenhanced
set output '{png}'
set multiplot layout 1,2 title '{"/".join(a.model.rstrip("/").split("/")[-2:])}: mtp serve under load ({a.threads} threads)'
set logscale x 2
set xlabel 'concurrent clients'
set ylabel 'aggregate tokens/s'
set key top left
plot for [i=0:{len(modes) - 1}] '{dat}' index i using 1:2 with linespoints title 'speculation '.word('{' '.join(modes)}', i+1)
set ylabel 'time to first token p50 (ms)'
plot for [i=0:{len(modes) - 1}] '{dat}' index i using 1:4 with linespoints title 'speculation '.word('{' '.join(modes)}', i+1)
unset multiplot
"""
pr = subprocess.run(["gnuplot"], input=gp, capture_output=True, text=True)
print(f"wrote {os.path.join(a.out, 'serve_load.md')}" + (f", {png}" if pr.returncode == 0 else f" (plot skipped: {pr.stderr.strip()})"))
