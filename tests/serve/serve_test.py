#!/usr/bin/env python3
"""`mtp serve` end to end over loopback with a real HTTP client (http.client): OpenAI completions and chat, streaming
(SSE) and not, include_usage, stop strings, the error objects and statuses, /tokenize, /detokenize, /v1/models,
/metrics counters after speculative requests, concurrent requests, a client that disconnects mid-stream, and greedy
output identical to `mtp generate`. The server is always stopped (finally), every request has a timeout, and only
127.0.0.1 is used."""
import http.client, json, os, re, shutil, signal, socket, subprocess, sys, threading, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serve_util import make_model, sse_request  # noqa: E402

mtp, work = sys.argv[1], sys.argv[2]
shutil.rmtree(work, ignore_errors=True)
os.makedirs(work)
env = dict(os.environ, OMP_NUM_THREADS="1")
HOST = "127.0.0.1"
T = 60   # seconds, per request: a hang guard, not a latency bound (as are the other deadlines and timeouts below;
         # only the two "< 1.0 s" checks are timing bounds)

passed = failed = 0
def check(name, ok, detail=""):
    global passed, failed
    print(f"{'ok  ' if ok else 'FAIL'} {name}{': ' + str(detail)[:400] if detail and not ok else ''}", flush=True)
    if ok: passed += 1
    else: failed += 1

def run(args, timeout=120):
    p = subprocess.run([mtp] + args, capture_output=True, text=True, errors="replace", timeout=timeout, env=env)
    return p.returncode, p.stdout, p.stderr

# --- a tokenizer trained here and a small random model with 2 MTP modules whose vocab matches it
CTX = 256
model, V = make_model(mtp, work, env, ctx=CTX, D=2, seed=7)

MAX_BODY = 65536
port = None
lines = []
# The load is held back 1.5 s (a test hook of the server) so that the loading state is observed for sure.
proc = subprocess.Popen([mtp, "serve", "--model", model, "--host", HOST, "--port", "0", "-t", "1", "--no-draft-adapt",
                         "--max-body-bytes", str(MAX_BODY)],
                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, errors="replace",
                        env=dict(env, MTP_SERVE_TEST_LOAD_DELAY_MS="1500"))
def read_stderr():
    for l in proc.stderr:
        lines.append(l.rstrip("\n"))
threading.Thread(target=read_stderr, daemon=True).start()

def request(method, path, body=None, raw=None, timeout=T):
    c = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        c.request(method, path, body=data, headers={"Content-Type": "application/json"} if data is not None else {})
        r = c.getresponse()
        b = r.read()
        return r.status, r.getheader("Content-Type") or "", b
    finally:
        c.close()

def post(path, body):
    st, ct, b = request("POST", path, body)
    try:
        return st, json.loads(b)
    except Exception:
        return st, {"_raw": b[:200]}

def sse(path, body, timeout=T):
    return sse_request(port, path, body, timeout=timeout, until_close=True)

def abandon_stream():
    """Starts a long streaming completion, reads the first bytes, and hangs up; returns those bytes."""
    s = socket.create_connection((HOST, port), timeout=10)
    body = json.dumps({"prompt": "hello", "max_tokens": CTX - 10, "temperature": 0, "ignore_eos": True,
                       "stream": True}).encode()
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
              b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    got = s.recv(256)
    s.close()
    return got

def metrics():
    st, ct, b = request("GET", "/metrics")
    out = {}
    for l in b.decode().splitlines():
        if l.startswith("#") or not l.strip(): continue
        k, v = l.rsplit(" ", 1)
        out[k] = float(v)
    return out

def is_error(st, j, status, param=None, code=None):
    e = j.get("error") if isinstance(j, dict) else None
    return (st == status and isinstance(e, dict) and set(e) == {"message", "type", "param", "code"} and
            isinstance(e["message"], str) and e["message"] and (param is None or e["param"] == param) and
            (code is None or e["code"] == code))

try:
    # --- the listener is up before the model is loaded; wait for /health
    deadline = time.time() + 60
    while port is None and time.time() < deadline and proc.poll() is None:
        for l in lines:
            m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", l)
            if m: port = int(m.group(1))
        time.sleep(0.05)
    assert port, "server did not start: " + "\n".join(lines)
    seen = set()
    health_ok = True
    st, ct, b = request("POST", "/v1/completions", {"prompt": "hello", "max_tokens": 2})
    check("POST while loading: 503 with an error object (model_loading)",
          is_error(st, json.loads(b), 503, code="model_loading"), (st, b[:200]))
    while time.time() < deadline:
        st, ct, b = request("GET", "/health", timeout=5)
        j = json.loads(b)
        seen.add(st)
        if st == 503: health_ok &= j == {"status": "loading"}
        if st == 200:
            health_ok &= j == {"status": "ok"}
            break
        time.sleep(0.05)
    check("/health: 503 {status: loading} while loading, then 200 {status: ok}", health_ok and seen == {503, 200}, seen)

    st, ct, b = request("GET", "/v1/models")
    j = json.loads(b)
    check("/v1/models", st == 200 and j["object"] == "list" and j["data"][0]["id"] == "model" and
          j["data"][0]["meta"]["speculative"] is True, j)

    # --- a burst of new connections is queued, not dropped: with the server stopped (SIGSTOP) nothing is accepted,
    # so the kernel completes handshakes only while the listen backlog has room; cpp-httplib's own backlog of 5 would
    # drop the 7th SYN (the client retries after 1 s, past the 0.5 s connect timeout here)
    burst, held = 32, []
    somaxconn = int(open("/proc/sys/net/core/somaxconn").read())   # the kernel's cap on any backlog
    if somaxconn < burst: burst = somaxconn
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        for _ in range(burst):
            try:
                held.append(socket.create_connection((HOST, port), timeout=0.5))
            except OSError:
                break
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        for s_ in held: s_.close()
    check(f"listen backlog: {burst} connections opened while the server accepts none", len(held) == burst, len(held))

    # --- greedy completion, and parity with `mtp generate`
    PROMPT, N = "the quick brown", 24
    m0 = metrics()
    st, j = post("/v1/completions", {"prompt": PROMPT, "max_tokens": N, "temperature": 0, "ignore_eos": True})
    ok = st == 200 and j.get("object") == "text_completion" and j["id"].startswith("cmpl-") and \
        isinstance(j.get("created"), int) and j["model"] == "model"
    check("completion: response shape", ok, j)
    text = j["choices"][0]["text"] if ok else ""
    check("completion: finish_reason length, usage",
          ok and j["choices"][0]["finish_reason"] == "length" and j["choices"][0]["index"] == 0 and
          j["usage"]["completion_tokens"] == N and
          j["usage"]["total_tokens"] == j["usage"]["prompt_tokens"] + N, j)
    tm = j.get("timings", {})
    check("completion: timings like llama-server",
          all(k in tm for k in ("prompt_n", "prompt_ms", "predicted_n", "predicted_ms", "predicted_per_second",
                                "draft_n", "draft_n_accepted")) and tm["predicted_n"] == N and tm["draft_n"] > 0, tm)
    m1 = metrics()
    d = lambda k: m1.get(k, 0) - m0.get(k, 0)
    check("metrics: speculative counters moved",
          d("vllm:spec_decode_num_drafts") > 0 and d("vllm:spec_decode_num_draft_tokens") == tm.get("draft_n") and
          d("vllm:spec_decode_num_accepted_tokens") == tm.get("draft_n_accepted") and
          d("llamacpp:n_drafted_total") == tm.get("draft_n") and
          d("llamacpp:n_accepted_total") == tm.get("draft_n_accepted") and
          'vllm:spec_decode_num_accepted_tokens_per_pos{position="0"}' in m1 and
          'vllm:spec_decode_num_accepted_tokens_per_pos{position="1"}' in m1, {k: d(k) for k in m1})
    check("metrics: token and request counters",
          d("llamacpp:prompt_tokens_total") == j["usage"]["prompt_tokens"] and
          d("llamacpp:tokens_predicted_total") == N and d("vllm:generation_tokens_total") == N and
          d('vllm:request_success_total{finished_reason="ok"}') == 1 and
          m1.get("llamacpp:requests_processing") == 0, m1)

    ids_file = os.path.join(work, "gen.tokens")
    rc, so, se = run(["generate", "--model", model, "--prompt", PROMPT, "-n", str(N), "--ignore-eos", "--temp", "0",
                      "--tokens-out", ids_file])
    gen_ids = [int(x) for x in open(ids_file).read().strip().split(",")] if rc == 0 else []
    check("greedy server text == `mtp generate` text", rc == 0 and so[:-1] == text, f"{so!r} vs {text!r} {se}")
    st, jd = post("/detokenize", {"tokens": gen_ids})
    check("... and == /detokenize of its token ids", st == 200 and jd["content"] == text and len(gen_ids) == N, jd)
    st, jt = post("/tokenize", {"content": PROMPT})
    check("/tokenize matches usage.prompt_tokens", st == 200 and len(jt["tokens"]) == j["usage"]["prompt_tokens"], jt)
    st, jd = post("/detokenize", {"tokens": jt.get("tokens", [])})
    check("/detokenize round trip", st == 200 and jd["content"] == PROMPT, jd)
    st, j2 = post("/v1/completions", {"prompt": PROMPT, "max_tokens": N, "temperature": 0, "ignore_eos": True,
                                      "top_k": 5, "seed": 3})
    check("greedy is deterministic", st == 200 and j2["choices"][0]["text"] == text, j2)
    st, j3 = post("/v1/completions", {"prompt": jt.get("tokens"), "max_tokens": N, "temperature": 0, "ignore_eos": True})
    check("prompt as token ids", st == 200 and j3["choices"][0]["text"] == text, j3)

    # --- streaming completion with usage
    st, ev = sse("/v1/completions", {"prompt": PROMPT, "max_tokens": N, "temperature": 0, "ignore_eos": True,
                                     "stream": True, "stream_options": {"include_usage": True}})
    chunks = [e for e in ev if isinstance(e, dict)]
    withc = [e for e in chunks if e.get("choices")]
    ok = st == 200 and ev and ev[-1] == "[DONE]" and len(withc) >= 2
    check("stream: chunks then [DONE]", ok, ev[:3])
    if ok:
        check("stream: same id/created, object text_completion",
              len({(e["id"], e["created"]) for e in chunks}) == 1 and all(e["object"] == "text_completion" for e in chunks),
              chunks[:2])
        check("stream: finish_reason null until the last content chunk",
              all(e["choices"][0]["finish_reason"] is None for e in withc[:-1]) and
              withc[-1]["choices"][0]["finish_reason"] == "length", withc[-2:])
        check("stream: text == non-streamed text", "".join(e["choices"][0]["text"] for e in withc) == text)
        u = chunks[-1]
        check("stream: include_usage -> final chunk with choices [] and usage",
              u["choices"] == [] and u["usage"]["completion_tokens"] == N and
              all(e.get("usage", 0) is None for e in withc), u)
    st, ev = sse("/v1/completions", {"prompt": PROMPT, "max_tokens": 5, "temperature": 0, "stream": True})
    check("stream without include_usage has no usage field",
          st == 200 and ev[-1] == "[DONE]" and all("usage" not in e for e in ev if isinstance(e, dict)), ev[:2])

    # --- stop strings (taken from the greedy text)
    # (a random model emits arbitrary bytes, shown with U+FFFD where they are not UTF-8: take an ASCII stop string)
    at = next((i for i in range(3, len(text) - 1) if all(32 <= ord(c) < 127 for c in text[i:i + 2])), None)
    if at is not None:
        stop = text[at:at + 2]
        want = text[:text.find(stop)]
        st, js = post("/v1/completions", {"prompt": PROMPT, "max_tokens": N, "temperature": 0, "ignore_eos": True,
                                          "stop": ["zzzzqqq", stop]})
        check("stop string: output ends before it, finish_reason stop",
              st == 200 and js["choices"][0]["text"] == want and js["choices"][0]["finish_reason"] == "stop",
              (js, stop, text))
        st, ev = sse("/v1/completions", {"prompt": PROMPT, "max_tokens": N, "temperature": 0, "ignore_eos": True,
                                         "stop": stop, "stream": True})
        withc = [e for e in ev if isinstance(e, dict) and e.get("choices")]
        check("stop string while streaming",
              st == 200 and "".join(e["choices"][0]["text"] for e in withc) == want and
              withc[-1]["choices"][0]["finish_reason"] == "stop", ev)
    else:
        check("greedy text long enough for the stop test", False, text)

    # --- chat (plain template: the test tokenizer has no DeepSeek special tokens)
    MSG = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}]
    st, jc = post("/v1/chat/completions", {"messages": MSG, "max_tokens": 12, "temperature": 0, "ignore_eos": True})
    ok = st == 200 and jc["object"] == "chat.completion" and jc["id"].startswith("chatcmpl-") and \
        jc["choices"][0]["message"]["role"] == "assistant" and jc["usage"]["completion_tokens"] == 12
    check("chat: response shape", ok, jc)
    chat_text = jc["choices"][0]["message"]["content"] if ok else None
    rc, so, se = run(["generate", "--model", model, "--prompt", "System: be brief\nUser: hello there\nAssistant:",
                      "-n", "12", "--ignore-eos"])
    check("chat: plain template, greedy == `mtp generate` on the templated prompt", rc == 0 and so[:-1] == chat_text,
          f"{so!r} vs {chat_text!r}")
    st, jpt = post("/tokenize", {"content": "System: be brief\nUser: hello there\nAssistant:"})
    check("chat: usage.prompt_tokens of the template", ok and jc["usage"]["prompt_tokens"] == len(jpt["tokens"]))
    st, ev = sse("/v1/chat/completions", {"messages": MSG, "max_tokens": 12, "temperature": 0, "ignore_eos": True,
                                          "stream": True, "stream_options": {"include_usage": True}})
    chunks = [e for e in ev if isinstance(e, dict)]
    withc = [e for e in chunks if e.get("choices")]
    ok = st == 200 and ev[-1] == "[DONE]" and len(withc) >= 2
    check("chat stream: chat.completion.chunk, role first, same id",
          ok and all(e["object"] == "chat.completion.chunk" for e in chunks) and
          withc[0]["choices"][0]["delta"].get("role") == "assistant" and len({e["id"] for e in chunks}) == 1, ev[:3])
    if ok:
        check("chat stream: content == non-streamed, finish_reason only last",
              "".join(e["choices"][0]["delta"].get("content", "") for e in withc) == chat_text and
              all(e["choices"][0]["finish_reason"] is None for e in withc[:-1]) and
              withc[-1]["choices"][0]["finish_reason"] == "length", withc)
        check("chat stream: usage chunk", chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 12,
              chunks[-1])
    st, js = post("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
                                           "max_tokens": 3, "temperature": 0.8, "top_p": 0.9, "seed": 1})
    check("chat: content parts, sampling", st == 200 and js["usage"]["completion_tokens"] <= 3, js)

    # --- errors: OpenAI error objects with the right status
    st, ct, b = request("POST", "/v1/completions", raw=b"{not json")
    check("bad JSON -> 400", is_error(st, json.loads(b), 400), b)
    st, ct, b = request("POST", "/v1/chat/completions", raw=b"[1, 2]")
    check("body not an object -> 400", is_error(st, json.loads(b), 400), b)
    cases = [
        ("max_tokens wrong type", "/v1/completions", {"prompt": "hi", "max_tokens": "ten"}, "max_tokens", None),
        ("temperature wrong type", "/v1/completions", {"prompt": "hi", "temperature": "hot"}, "temperature", None),
        ("stream wrong type", "/v1/completions", {"prompt": "hi", "stream": "yes"}, "stream", None),
        ("stop wrong type", "/v1/completions", {"prompt": "hi", "stop": 5}, "stop", None),
        ("prompt wrong type", "/v1/completions", {"prompt": {"a": 1}}, "prompt", None),
        ("prompt missing", "/v1/completions", {"max_tokens": 3}, "prompt", None),
        ("messages missing", "/v1/chat/completions", {"prompt": "hi"}, "messages", None),
        ("messages wrong type", "/v1/chat/completions", {"messages": "hi"}, "messages", None),
        ("bad role", "/v1/chat/completions", {"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role", None),
        ("n = 2", "/v1/completions", {"prompt": "hi", "n": 2}, "n", None),
        ("max_tokens 0", "/v1/completions", {"prompt": "hi", "max_tokens": 0}, "max_tokens", None),
        ("max_tokens beyond the context", "/v1/completions", {"prompt": "hi", "max_tokens": 100000}, "max_tokens",
         "context_length_exceeded"),
        ("prompt longer than the context", "/v1/completions", {"prompt": [5] * (CTX + 10)}, "prompt",
         "context_length_exceeded"),
        ("prompt text longer than the context", "/v1/chat/completions",
         {"messages": [{"role": "user", "content": "the lazy dog! " * 400}]}, "messages", "context_length_exceeded"),
        ("token id outside the vocabulary", "/v1/completions", {"prompt": [1, V + 5]}, "prompt", None),
        ("top_p 0", "/v1/completions", {"prompt": "hi", "top_p": 0}, "top_p", None),
        ("temperature negative", "/v1/completions", {"prompt": "hi", "temperature": -1}, "temperature", None),
        ("empty prompt", "/v1/completions", {"prompt": ""}, "prompt", None),
        ("/tokenize without content", "/tokenize", {"text": "x"}, "content", None),
        ("/detokenize bad ids", "/detokenize", {"tokens": [1, "x"]}, "tokens", None),
    ]
    for name, path, body, param, code in cases:
        st, jb = post(path, body)
        check("error: " + name + " -> 400", is_error(st, jb, 400, param, code), (st, jb))
    st, ct, b = request("POST", "/v1/completions", raw=json.dumps({"prompt": "x" * (MAX_BODY + 4000)}).encode())
    check("body over --max-body-bytes -> 413", is_error(st, json.loads(b), 413), (st, b[:200]))
    st, ct, b = request("GET", "/v1/nope")
    check("unknown route -> 404", is_error(st, json.loads(b), 404), (st, b))
    st, ct, b = request("POST", "/v1/embeddings", raw=b"{}")
    check("unknown POST route -> 404", is_error(st, json.loads(b), 404), (st, b))
    m2 = metrics()
    # - 2: the /tokenize and /detokenize cases are not generation requests (only handle_generate counts); >= since the
    # two raw bad-body requests above count too
    check("metrics: rejected requests counted", m2.get("mtp:requests_rejected_total", 0) >= len(cases) - 2, m2)

    # --- concurrent requests: queued on one worker, each answered as if alone
    prompts = ["hello world", "the lazy dog", "a small model"]
    alone = []
    for p in prompts:
        st, jj = post("/v1/completions", {"prompt": p, "max_tokens": 30, "temperature": 0, "ignore_eos": True})
        alone.append(jj["choices"][0]["text"] if st == 200 else None)
    results = [None] * 4
    def worker(i):
        try:
            if i < 3:
                st, jj = post("/v1/completions", {"prompt": prompts[i], "max_tokens": 30, "temperature": 0,
                                                  "ignore_eos": True})
                results[i] = jj["choices"][0]["text"] if st == 200 else ("status", st)
            else:
                st, ev = sse("/v1/completions", {"prompt": prompts[0], "max_tokens": 30, "temperature": 0,
                                                 "ignore_eos": True, "stream": True})
                results[i] = "".join(e["choices"][0]["text"] for e in ev if isinstance(e, dict) and e.get("choices"))
        except Exception as e:
            results[i] = ("exception", repr(e))
    ths = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in ths: t.start()
    for t in ths: t.join(T + 10)
    check("concurrent requests all answered correctly", results == alone + [alone[0]], (results, alone))

    # --- a client that disconnects mid-stream frees the worker
    m3 = metrics()
    got = abandon_stream()
    check("disconnect: the stream had started", got.startswith(b"HTTP/1.1 200"), got)
    st, jj = post("/v1/completions", {"prompt": prompts[1], "max_tokens": 30, "temperature": 0, "ignore_eos": True},)
    check("after a disconnect a later request succeeds", st == 200 and jj["choices"][0]["text"] == alone[1], jj)
    deadline = time.time() + 10
    while time.time() < deadline and metrics().get("llamacpp:requests_processing", 1) != 0: time.sleep(0.05)
    m4 = metrics()
    check("disconnect: nothing left processing or queued",
          m4.get("llamacpp:requests_processing") == 0 and m4.get("llamacpp:requests_deferred") == 0, m4)
    check("disconnect: the abandoned generation stopped early or finished (counted)",
          # at most the abandoned request's max_tokens (CTX - 10) plus the 30 of the request after it
          m4["llamacpp:tokens_predicted_total"] - m3["llamacpp:tokens_predicted_total"] <= CTX - 10 + 30, m4)
    # --- hostile framing and idle clients: answered at once, /health never starved
    def raw_req(data, timeout=10):
        s2 = socket.create_connection((HOST, port), timeout=timeout)
        t0 = time.time()
        s2.sendall(data)
        try:
            got = s2.recv(65536)
        except socket.timeout:
            got = b""
        s2.close()
        return time.time() - t0, got
    for cl, want in (("-5", b" 400 "), ("18446744073709551616", b" 400 "), ("abc", b" 400 "), (str(1 << 30), b" 413 ")):
        dt, got = raw_req(("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                           "Content-Length: %s\r\n\r\n" % cl).encode())
        # 1 s: a server that waited for the body would answer only at its 10 s read timeout (server.cpp)
        check(f"Content-Length {cl[:12]}: answered at once", want in got.split(b"\r\n")[0] and dt < 1.0, (dt, got[:80]))
    deep_body = b"[" * 2000 + b"]" * 2000                       # 4,000 B < --max-body-bytes 65,536; depth 2,000 > 64
    dt, got = raw_req(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: %d\r\n\r\n" % len(deep_body) + deep_body)
    check("a body nested 2,000 deep: 400", b" 400 " in got.split(b"\r\n")[0], got[:120])
    st, jj = post("/v1/completions", {"prompt": prompts[0], "max_tokens": 2 ** 64 - 1})
    check("max_tokens 2^64-1: out of range, not 'at least 1'", is_error(st, jj, 400, "max_tokens") and
          "out of range" in jj["error"]["message"], jj)
    idle = [socket.create_connection((HOST, port), timeout=10) for _ in range(64)]
    worst = 0.0
    for _ in range(20):
        t0 = time.time()
        st, _, _ = request("GET", "/health")
        worst = max(worst, time.time() - t0)
    # 64 < serve_workers (256): /health gets a free worker; a starved one would wait for the 2 s keep-alive or the 10 s
    # read timeout of an idle connection, hence 1 s
    check("64 idle connections held open: /health within 1 s", st == 200 and worst < 1.0, worst)
    for s3 in idle: s3.close()
finally:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
check("server exits on SIGTERM", proc.returncode == 0, (proc.returncode, lines[-5:]))

# --- EOS over HTTP: a copy of the model whose eos_token_id is the 7th greedy token of the prompt's continuation;
# without ignore_eos the request ends there with finish_reason "stop", the EOS token counted but not in the text
eos_model = os.path.join(work, "model_eos")
shutil.copytree(model, eos_model)
toks_f = os.path.join(work, "eos.tokens")
rc, so, se = run(["generate", "--model", model, "--prompt", "hello world", "-n", "40", "--ignore-eos",
                  "--tokens-out", toks_f])
ids = [int(x) for x in open(toks_f).read().split(",")]
eos = ids[6]; first = ids.index(eos)
ec = json.load(open(os.path.join(eos_model, "config.json"))); ec["eos_token_id"] = eos
json.dump(ec, open(os.path.join(eos_model, "config.json"), "w"))
lines = []
# each decode round held back 20 ms (a test hook), so that a client leaving mid-generation is seen in time
proc = subprocess.Popen([mtp, "serve", "--model", eos_model, "--host", HOST, "--port", "0", "-t", "1"],
                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, errors="replace",
                        env=dict(env, MTP_SERVE_TEST_STEP_DELAY_MS="20"))
threading.Thread(target=read_stderr, daemon=True).start()
try:
    port = None
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        for l in lines:
            m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", l)
            if m: port = int(m.group(1))
        if port:
            try:
                if request("GET", "/health", timeout=5)[0] == 200: break
            except OSError:
                pass
        time.sleep(0.05)
    st, jj = post("/detokenize", {"tokens": ids[:first]})
    want_text = jj["content"]
    st, jj = post("/v1/completions", {"prompt": "hello world", "max_tokens": 40, "temperature": 0})
    ch = jj["choices"][0] if st == 200 else {}
    check("EOS over HTTP: finish_reason stop, EOS counted, its text dropped",
          st == 200 and ch["finish_reason"] == "stop" and jj["usage"]["completion_tokens"] == first + 1 and
          ch["text"] == want_text, (first, jj))
    st, jj = post("/v1/completions", {"prompt": "hello world", "max_tokens": 40, "temperature": 0, "ignore_eos": True})
    check("ignore_eos over HTTP: runs to max_tokens", st == 200 and jj["choices"][0]["finish_reason"] == "length" and
          jj["usage"]["completion_tokens"] == 40, jj)
    _, ev = sse("/v1/completions", {"prompt": "hello world", "max_tokens": 40, "temperature": 0, "stream": True})
    withc = [e for e in ev if isinstance(e, dict) and e.get("choices")]
    check("EOS over HTTP, streaming: the last chunk says stop, the text matches",
          withc and withc[-1]["choices"][0]["finish_reason"] == "stop" and
          "".join(e["choices"][0].get("text", "") for e in withc) == want_text, withc[-2:] if withc else ev)
    # a client that leaves mid-stream: generation stops within a few rounds of the next write (20 ms rounds; the
    # request could produce CTX - 10 = 246 tokens, i.e. 1.6 s of rounds at 3 tokens each, ~5 s at 1 token each).
    # 40 tokens ≤ 40 rounds (0.8 s) of slack for noticing the disconnect, against the 246 it could run on for.
    m3 = metrics()
    got = abandon_stream()
    deadline = time.time() + 20
    def busy(m):   # the abandoned request is queued (deferred) or running; the headers we read came after queueing
        return m.get("llamacpp:requests_processing", 1) + m.get("llamacpp:requests_deferred", 1) != 0
    while time.time() < deadline and busy(metrics()): time.sleep(0.05)
    m4 = metrics()
    gen_after = m4["llamacpp:tokens_predicted_total"] - m3["llamacpp:tokens_predicted_total"]
    # (0 when the server saw the disconnect before the first round, as under ASan)
    check("a client that leaves mid-stream: generation stops within a few rounds (counted)",
          got.startswith(b"HTTP/1.1 200") and 0 <= gen_after <= 40 and not busy(m4), (gen_after, got[:40], m4))
finally:
    proc.terminate()
    proc.wait(15)
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
