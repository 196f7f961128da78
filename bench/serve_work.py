#!/usr/bin/env python3
"""The work `mtp serve` does per generated token, counted from /metrics (timing noise does not change it): shared
passes, rows of those passes and per-slot calls per token, the decode rounds by the draft length the load-adaptive
policy chose, the rounds whose sequences were given different lengths (mixed), and its probe interval at each load.
One server, `requests` greedy completions of `--n-gen` tokens from `conc` concurrent clients (loopback only).
  /usr/bin/python3 bench/serve_work.py build/mtp MODEL [--conc 1,2,4,8,16] [--requests 256] [--spec mtp|none]
      [--n-gen 64] [--threads 2] [--parallel 16] [--weights f32|bf16|q8_0]"""
import argparse, http.client, json, re, threading

from serve_start import start_server

ap = argparse.ArgumentParser()
ap.add_argument("mtp")
ap.add_argument("model")
ap.add_argument("--conc", default="1,2,4,8,16")
ap.add_argument("--requests", type=int, default=256)
ap.add_argument("--spec", default="mtp")
ap.add_argument("--n-gen", type=int, default=64)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--parallel", type=int, default=16)
ap.add_argument("--weights", default="", help="the served weight type (default: as stored)")
a = ap.parse_args()


def start():
    return start_server([a.mtp, "serve", "--model", a.model, "--port", "0", "-t", str(a.threads), "--parallel",
                         str(a.parallel), "--spec", a.spec] + (["--weights", a.weights] if a.weights else []))[:2]


def metrics(port):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    c.request("GET", "/metrics")
    text = c.getresponse().read().decode()
    return {k: float(v) for k, v in re.findall(r"^(mtp:[a-z_]+(?:\{[^}]*\})?) ([0-9.e+-]+)$", text, re.M)}


def complete(port, i):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    body = {"prompt": "The jury said %d" % i, "max_tokens": a.n_gen, "temperature": 0, "ignore_eos": True}
    c.request("POST", "/v1/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
    r = c.getresponse()
    assert r.status == 200, r.read()
    return json.loads(r.read())["usage"]["completion_tokens"]


print("| c | tokens | passes/token | rows/token | calls/token | decode rounds by draft length | mixed rounds | "
      "probe interval by busy slots |")
print("|---:|---:|---:|---:|---:|---|---:|---|")
for conc in [int(x) for x in a.conc.split(",")]:
    p, port = start()
    try:
        complete(port, 0)                                  # warm-up
        m0, toks, lock = metrics(port), [0], threading.Lock()
        def client(ci):
            for k in range(a.requests // conc):
                n = complete(port, ci * 100000 + k + 1)
                with lock: toks[0] += n
        ths = [threading.Thread(target=client, args=(i,)) for i in range(conc)]
        for t in ths: t.start()
        for t in ths: t.join()
        m1 = metrics(port)
    finally:
        p.terminate()
        p.wait(30)
    d = lambda k: m1.get(k, 0.0) - m0.get(k, 0.0)
    label = lambda k: k.split("{")[1].rstrip("}").split("=")[1].strip('"')
    rounds = " ".join(f"{label(k)}: {d(k):.0f}" for k in m1 if k.startswith("mtp:draft_length_chosen_total"))
    probes = " ".join(f"{label(k)}: {m1[k]:.0f}" for k in m1 if k.startswith("mtp:draft_probe_interval"))
    n = max(1, toks[0])
    print(f"| {conc} | {toks[0]} | {d('mtp:batch_passes_total') / n:.4f} | {d('mtp:batch_rows_total') / n:.4f} | "
          f"{d('mtp:batch_calls_total') / n:.4f} | {rounds or '-'} | {d('mtp:draft_rounds_mixed_total'):.0f} | "
          f"{probes or '-'} |", flush=True)
