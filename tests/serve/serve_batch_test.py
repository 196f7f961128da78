#!/usr/bin/env python3
"""`mtp serve` with slots and continuous batching, over loopback: concurrent greedy requests (1, 3 and 8 at once,
with and without speculation, fixed and load-adapted drafts, with and without prompt-cache hits) each give exactly
the text `mtp generate` gives for that prompt alone; seeded sampling matches too; API keys (401 on every endpoint
but /health); a full queue (503 + Retry-After + error object); clients that go away (streaming and not) free their
slot at once; the per-request time limit; SIGTERM under load (every client answered, clean exit)."""
import json, os, shutil, subprocess, sys, threading, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serve_util import Server, make_model, is_error, Checks

mtp, work = sys.argv[1], sys.argv[2]
shutil.rmtree(work, ignore_errors=True)
os.makedirs(work)
env = dict(os.environ, OMP_NUM_THREADS="1")
check = Checks()
model, V = make_model(mtp, work, env)
slow = dict(env, MTP_SERVE_TEST_STEP_DELAY_MS="20")   # each decode round held back 20 ms (a test hook)

# distinct first words: a follow-up shares a prefix with its own slot's tokens only, so its slot is the one chosen
PROMPTS = ["hello world", "the quick brown fox", "a small model", "over the lazy dog. hello there",
           "serves text over http. the quick", "jumps", "lazy dog jumps over the quick brown fox. " * 3,
           "world, hello there. a small"]
alone_cache = {}
def alone(prompt, n, extra=()):
    """`mtp generate` on the prompt alone (greedy unless extra says otherwise)."""
    key = (prompt, n, tuple(extra))
    if key not in alone_cache:
        temp = [] if "--temp" in extra else ["--temp", "0"]
        p = subprocess.run([mtp, "generate", "--model", model, "--prompt", prompt, "-n", str(n), "--ignore-eos",
                            "-t", "1"] + temp + list(extra), capture_output=True, text=True, errors="replace",
                           timeout=120, env=env)
        assert p.returncode == 0, p.stderr
        alone_cache[key] = p.stdout[:-1]
    return alone_cache[key]

def text_of(srv, prompt, n, stream, extra=None):
    body = {"prompt": prompt, "max_tokens": n, "temperature": 0, "ignore_eos": True}
    body.update(extra or {})
    if not stream:
        st, j = srv.post("/v1/completions", body)
        return (j["choices"][0]["text"], j["timings"]) if st == 200 else (("status", st, j), {})
    body["stream"] = True
    st, ev = srv.sse("/v1/completions", body)
    if st != 200: return ("status", st), {}
    chunks = [e for e in ev if isinstance(e, dict) and e.get("choices")]
    return "".join(e["choices"][0]["text"] for e in chunks), (chunks[-1].get("timings", {}) if chunks else {})

def concurrently(fns):
    out = [None] * len(fns)
    def run(i):
        try: out[i] = fns[i]()
        except Exception as e: out[i] = ("exception", repr(e))
    ths = [threading.Thread(target=run, args=(i,)) for i in range(len(fns))]
    for t in ths: t.start()
    for t in ths: t.join(120)
    return out

# --- identity under batching: four servers, concurrency 1, 3 and 8, then follow-ups that hit the prompt cache
# "drafting priced free": the draft policy's cost table says drafting costs nothing (a test hook), so that this tiny
# compute-bound model drafts under the policy (mixed rounds, backlogs, probes) until measured rounds veto it
free = dict(env, MTP_SERVE_TEST_DRAFTS_FREE="1")
for name, args, senv in (("speculation, fixed drafts", ["--no-draft-adapt"], env),
                         ("speculation, adaptive drafts", [], env),
                         ("speculation, adaptive drafts priced free", [], free),
                         ("no speculation", ["--spec", "none"], env)):
    srv = Server(mtp, ["--model", model, "-t", "1", "--parallel", "8", "--prefill-chunk", "16"] + args, senv)
    try:
        if name != "no speculation":
            # a one-token request does no decode round. With a draft policy the MTP modules' pass over the prompt
            # waits for a round that drafts (none here), so only the prompt's rows are computed, even where the
            # policy would draft; with fixed drafts the modules run over the prompt at the start.
            r0 = srv.metrics().get("mtp:batch_rows_total", 0)
            st, j = srv.post("/v1/completions", {"prompt": PROMPTS[6], "max_tokens": 1, "cache_prompt": False})
            rows = srv.metrics().get("mtp:batch_rows_total", 0) - r0
            P = j.get("timings", {}).get("prompt_n", -1) if st == 200 else -1
            adaptive = "adaptive" in name
            check(f"{name}: a one-token request computes {'only' if adaptive else 'more than'} its prompt's rows",
                  P > 0 and (rows == P if adaptive else rows > P), (st, P, rows))
            if name.endswith("priced free"):
                m = srv.metrics()
                check(f"{name}: the policy would draft at one busy slot",
                      m.get('mtp:draft_length_now{slots_busy="1"}', 0) > 0, {k: v for k, v in m.items() if "draft" in k})
        for conc in (1, 3, 8):
            ps = [PROMPTS[(i + conc) % len(PROMPTS)] for i in range(conc)]
            ns = [20 + 7 * i for i in range(conc)]
            got = concurrently([lambda i=i: text_of(srv, ps[i], ns[i], stream=i % 2 == 1) for i in range(conc)])
            want = [alone(ps[i], ns[i]) for i in range(conc)]
            texts = [g[0] if isinstance(g, tuple) and len(g) == 2 else g for g in got]
            check(f"{name}: {conc} concurrent greedy requests == `mtp generate` alone", texts == want, (texts, want))
            # follow-ups: the previous prompt + its output + more text, concurrently (prompt-cache hits)
            fps = [ps[i] + want[i] + " the quick" for i in range(conc)]
            got = concurrently([lambda i=i: text_of(srv, fps[i], 16, stream=i % 2 == 0) for i in range(conc)])
            want2 = [alone(fps[i], 16) for i in range(conc)]
            texts = [g[0] for g in got]
            cached = [g[1].get("tokens_cached", 0) for g in got]
            check(f"{name}: {conc} concurrent follow-ups hit the prompt cache", all(c > 0 for c in cached), cached)
            check(f"{name}: ... and == `mtp generate` alone", texts == want2, (texts, want2))
        # the same prompt with the cache refused by the request: nothing reused, the same text
        t, tm = text_of(srv, fps[0], 16, False, {"cache_prompt": False})
        check(f"{name}: cache_prompt false: nothing reused, same text", tm.get("tokens_cached") == 0 and t == want2[0],
              (t, tm))
        m = srv.metrics()
        check(f"{name}: passes were shared (rows per pass > 1)",
              m.get("mtp:batch_calls_total", 0) > m.get("mtp:batch_passes_total", 1), m)
        if name == "speculation, fixed drafts":
            # seeded sampling: the same seed gives the same text as `mtp generate --seed` (fixed draft length)
            outs = concurrently([lambda s=s: srv.post("/v1/completions", {"prompt": PROMPTS[s], "max_tokens": 24,
                                 "temperature": 0.8, "seed": 40 + s, "ignore_eos": True}) for s in range(4)])
            texts = [o[1]["choices"][0]["text"] if o[0] == 200 else o for o in outs]
            want = [alone(PROMPTS[s], 24, ("--temp", "0.8", "--seed", str(40 + s))) for s in range(4)]
            check("seeded sampling, 4 at once == `mtp generate --temp 0.8 --seed S`", texts == want, (texts, want))
            check("fixed drafts: draft tokens were verified", m.get("llamacpp:n_drafted_total", 0) > 0, m)
        if name.endswith("priced free"):
            check(f"{name}: draft tokens were verified", m.get("llamacpp:n_drafted_total", 0) > 0, m)
        if "adaptive" in name:
            chosen = {k: v for k, v in m.items() if k.startswith("mtp:draft_length_chosen_total")}
            check("adaptive drafts: chosen draft lengths reported in /metrics", sum(chosen.values()) > 0, chosen)
            check("adaptive drafts: the policy's choice per load in /metrics",
                  any(k.startswith("mtp:draft_length_now") for k in m), list(m)[:50])
            check("adaptive drafts: mixed rounds counted in /metrics", "mtp:draft_rounds_mixed_total" in m, list(m)[:50])
    finally:
        rc = srv.stop()
    check(f"{name}: clean exit on SIGTERM", rc == 0, (rc, srv.lines[-3:]))

# --- a follow-up sent the moment a response ends finds its prefix: the slot is released, with its cached tokens,
# before the client sees the end (a test hook holds each request's slot 300 ms between its last token and the
# release; released after the response instead, the follow-up would find that slot busy and take a cold one)
held = dict(env, MTP_SERVE_TEST_RELEASE_DELAY_MS="300")
srv = Server(mtp, ["--model", model, "-t", "1", "--parallel", "3", "--spec", "none"], held)
try:
    for stream in (False, True):
        first = PROMPTS[1 + int(stream)]
        out, _ = text_of(srv, first, 8, stream)
        t, tm = text_of(srv, first + out + " the quick", 8, stream)
        check(f"follow-up at once ({'streaming' if stream else 'not streaming'}) hits the prompt cache",
              tm.get("tokens_cached", 0) > 0, tm)
finally:
    srv.stop()

# --- API keys
keyfile = os.path.join(work, "keys.txt")
open(keyfile, "w").write("# accepted keys\n\n  key-from-file-2  \n")
srv = Server(mtp, ["--model", model, "-t", "1", "--api-key", "sekrit-1", "--api-key-file", keyfile], env)
try:
    st, h, b = srv.request("GET", "/health")
    check("keys: /health needs no key", st == 200, (st, b))
    eps = [("GET", "/v1/models", None), ("GET", "/metrics", None),
           ("POST", "/v1/completions", {"prompt": "hello", "max_tokens": 2}),
           ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}),
           ("POST", "/tokenize", {"content": "hello"}), ("POST", "/detokenize", {"tokens": [1, 2]}),
           ("GET", "/no-such-route", None)]
    for method, path, body in eps:
        for hdr, label in (({}, "no key"), ({"Authorization": "Bearer wrong"}, "a wrong key"),
                           ({"Authorization": "sekrit-1"}, "no Bearer"), ({"Authorization": "Bearer sekrit-"}, "a prefix")):
            st, h, b = srv.request(method, path, body, hdr)
            try: j = json.loads(b)
            except Exception: j = {}
            check(f"keys: {method} {path} with {label} -> 401 + error object",
                  is_error(st, j, 401, "invalid_api_key") and h.get("www-authenticate") == "Bearer", (st, b[:200]))
        for key in ("sekrit-1", "key-from-file-2"):
            st, h, b = srv.request(method, path, body, {"Authorization": "Bearer " + key})
            check(f"keys: {method} {path} with a right key -> not 401", st != 401 and
                  st == (404 if path == "/no-such-route" else 200), (st, b[:200]))
finally:
    srv.stop()
check("keys: never written to the log", not any("sekrit" in l or "key-from-file" in l for l in srv.lines), srv.lines)
p = subprocess.run([mtp, "serve", "--model", model, "--api-key-file", os.path.join(work, "none.txt")],
                   capture_output=True, text=True, timeout=60, env=env)
check("keys: a missing key file: one line naming it, exit 1",
      p.returncode == 1 and "none.txt" in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr)
open(os.path.join(work, "empty.txt"), "w").write("# nothing\n")
p = subprocess.run([mtp, "serve", "--model", model, "--api-key-file", os.path.join(work, "empty.txt")],
                   capture_output=True, text=True, timeout=60, env=env)
check("keys: a key file without keys: one line, exit 1", p.returncode == 1 and "no API key" in p.stderr, p.stderr)
for bad in (["--parallel", "0"], ["--queue", "-1"], ["--prefill-chunk", "0"], ["--request-timeout", "-1"]):
    p = subprocess.run([mtp, "serve", "--model", model] + bad, capture_output=True, text=True, timeout=60, env=env)
    check(f"bad flag {' '.join(bad)}: one line naming it, exit 1",
          p.returncode == 1 and bad[0] in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr)

# --- overload, disconnects, time limit: one slot, a queue of one, 20 ms rounds
def busy(srv):
    m = srv.metrics()
    return m.get("mtp:slots_busy", -1), m.get("mtp:queue_length", -1)

def wait_for(cond, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond(): return True
        time.sleep(0.01)
    return False

def open_stream(srv, n):
    body = json.dumps({"prompt": "hello", "max_tokens": n, "temperature": 0, "ignore_eos": True,
                       "stream": True}).encode()
    s = srv.raw(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: " +
                str(len(body)).encode() + b"\r\n\r\n" + body)
    s.recv(64)
    return s

srv = Server(mtp, ["--model", model, "-t", "1", "--parallel", "1", "--queue", "1", "--request-timeout", "2"], slow)
try:
    a = open_stream(srv, 200)                                    # holds the slot (200 rounds = 4 s; the limit is 2 s)
    check("overload: the first request runs", wait_for(lambda: busy(srv) == (1, 0)), busy(srv))
    queued = []
    tq = threading.Thread(target=lambda: queued.append(srv.post("/v1/completions", {"prompt": "hi", "max_tokens": 3})))
    tq.start()
    check("overload: the second waits in the queue", wait_for(lambda: busy(srv) == (1, 1)), busy(srv))
    st, h, b = srv.request("POST", "/v1/completions", {"prompt": "hi", "max_tokens": 3})
    check("overload: a third gets 503 + Retry-After + error object",
          is_error(st, json.loads(b), 503, "server_overloaded") and h.get("retry-after", "").isdigit(), (st, h, b))
    t0 = time.time()
    a.close()                                                    # streaming client gone
    check("disconnect (streaming): the slot is free at once and the queued request runs",
          wait_for(lambda: len(queued) == 1, 5) and queued[0][0] == 200, queued)
    dt = time.time() - t0
    # noticed at the write after the one that found the peer gone: about 2 rounds of 20 ms (+ this polling)
    check("disconnect (streaming): noticed within a few 20 ms rounds", dt < 0.25, dt)
    tq.join(10)
    m0 = srv.metrics()
    # non-streaming client gone: it waits without writing; the server watches its socket
    body = json.dumps({"prompt": "hello", "max_tokens": 200, "temperature": 0, "ignore_eos": True}).encode()
    s = srv.raw(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: " +
                str(len(body)).encode() + b"\r\n\r\n" + body)
    check("disconnect (not streaming): the request runs", wait_for(lambda: busy(srv)[0] == 1), busy(srv))
    time.sleep(0.2)
    t0 = time.time()
    s.close()
    freed = wait_for(lambda: busy(srv)[0] == 0, 5)
    dt = time.time() - t0
    m1 = srv.metrics()
    gen = m1["llamacpp:tokens_predicted_total"] - m0["llamacpp:tokens_predicted_total"]
    check("disconnect (not streaming): slot freed within a few rounds, generation stopped early",
          freed and dt < 0.25 and gen < 200, (dt, gen))   # the socket is polled every 20 ms, rounds take 20 ms
    # time limit: 200 rounds would take 4 s; --request-timeout 2 stops it with what it has
    t0 = time.time()
    st, j = srv.post("/v1/completions", {"prompt": "hello", "max_tokens": 200, "temperature": 0, "ignore_eos": True})
    dt = time.time() - t0
    check("time limit: the response carries the text so far, finish_reason length, time_limit_reached",
          st == 200 and j["choices"][0]["finish_reason"] == "length" and j["timings"]["time_limit_reached"] and
          j["usage"]["completion_tokens"] < 200 and 1.5 < dt < 3.5, (st, dt, j.get("usage"), j.get("timings")))
finally:
    srv.stop()

# --- SIGTERM under load: 2 slots, one short request that finishes in the grace time, one long one that does not,
# four queued; every client gets an answer and the server exits 0
srv = Server(mtp, ["--model", model, "-t", "1", "--parallel", "2", "--queue", "8", "--shutdown-timeout", "1"], slow)
res = [None] * 6
def client(i):
    n = 10 if i == 0 else 200
    body = {"prompt": "hello", "max_tokens": n, "temperature": 0, "ignore_eos": True}
    try:
        if i % 2:
            res[i] = ("stream",) + srv.sse("/v1/completions", dict(body, stream=True), timeout=30)
        else:
            res[i] = ("plain",) + srv.post("/v1/completions", body, timeout=30)
    except Exception as e:
        res[i] = ("exception", repr(e))
ths = []
for i in range(6):
    ths.append(threading.Thread(target=client, args=(i,)))
    ths[-1].start()
    time.sleep(0.02)
wait_for(lambda: busy(srv)[0] == 2)
time.sleep(0.1)
t0 = time.time()
rc = srv.stop(timeout=20)
dt = time.time() - t0
for t in ths: t.join(30)
# the long requests would need 4 s more (200 rounds of 20 ms): ending them after the 1 s grace is what keeps this short
check("SIGTERM under load: exit 0 within the 1 s grace + a little", rc == 0 and dt < 3, (rc, dt))
def outcome(r):
    if r is None or r[0] == "exception": return "lost"
    if r[0] == "plain":
        return "ok" if r[1] == 200 else ("error %d" % r[1] if is_error(r[1], r[2], r[1]) else "bad")
    ev = r[2]
    if r[1] != 200: return "error %d" % r[1]
    if any(isinstance(e, dict) and "error" in e for e in ev): return "error in-band"
    return "ok" if ev and ev[-1] == "[DONE]" else "bad"
outs = [outcome(r) for r in res]
check("SIGTERM under load: the short request finished", outs[0] == "ok", outs)
check("SIGTERM under load: every other one ended with an error object (none lost, none hung)",
      all(o.startswith("error") for o in outs[1:]), outs)
print(f"{check.passed} passed, {check.failed} failed")
sys.exit(1 if check.failed else 0)
