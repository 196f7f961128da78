"""Helpers of the serving tests: a tokenizer and a tiny random model made with `mtp`, a server process on loopback
(started, waited for, always stopped), and HTTP requests with timeouts (http.client only)."""
import http.client, json, os, re, shutil, socket, subprocess, threading, time

HOST = "127.0.0.1"


def make_model(mtp, work, env, ctx=256, D=2, seed=7):
    """A 300-token BPE tokenizer trained here and a random MoE model with D MTP modules whose vocab matches it."""
    def run(args):
        p = subprocess.run([mtp] + args, capture_output=True, text=True, errors="replace", timeout=120, env=env)
        assert p.returncode == 0, p.stderr
    corpus = os.path.join(work, "corpus.txt")
    with open(corpus, "w") as f:
        f.write(("the quick brown fox jumps over the lazy dog. hello world, hello there. "
                 "a small model serves text over http. ") * 40)
    tok = os.path.join(work, "tokenizer.json")
    run(["tokenizer", "train", "--vocab-size", "300", "--input", corpus, "--out", tok])
    tj = json.load(open(tok))
    V = max(list(tj["model"]["vocab"].values()) + [a["id"] for a in tj.get("added_tokens", [])]) + 1
    cfg = {"vocab_size": V, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
           "intermediate_size": 48, "moe_intermediate_size": 16, "n_routed_experts": 4, "n_shared_experts": 1,
           "num_experts_per_tok": 2, "first_k_dense_replace": 1, "kv_lora_rank": 16, "q_lora_rank": 16,
           "qk_nope_head_dim": 8, "qk_rope_head_dim": 4, "v_head_dim": 8, "num_nextn_predict_layers": D,
           "initializer_range": 0.2, "max_position_embeddings": ctx}
    cfgp = os.path.join(work, "cfg.json")
    json.dump(cfg, open(cfgp, "w"))
    model = os.path.join(work, "model")
    run(["init", "--config", cfgp, "--seed", str(seed), "--out", model])
    shutil.copy(tok, os.path.join(model, "tokenizer.json"))
    return model, V


def sse_request(port, path, body, headers=None, timeout=60, until_close=False):
    """(status, events) of a streaming POST: each event a parsed JSON object or the string '[DONE]'. Reading stops at
    [DONE], or with until_close at the end of the response (so that an event after [DONE] shows)."""
    c = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        h = {"Content-Type": "application/json"}
        h.update(headers or {})
        c.request("POST", path, body=json.dumps(body).encode(), headers=h)
        r = c.getresponse()
        if r.status != 200:
            return r.status, [r.read()]
        events = []
        deadline = time.time() + timeout
        while time.time() < deadline:
            line = r.readline()
            if not line: break
            line = line.decode("utf-8").strip()
            if line.startswith("data: "):
                d = line[6:]
                events.append(d if d == "[DONE]" else json.loads(d))
                if d == "[DONE]" and not until_close: break
        return r.status, events
    finally:
        c.close()


class Server:
    """`mtp serve` on 127.0.0.1 and a free port; stderr lines collected in .lines."""

    def __init__(self, mtp, args, env, timeout=60):
        self.lines = []
        self.port = None
        self.proc = subprocess.Popen([mtp, "serve", "--host", HOST, "--port", "0"] + args, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, errors="replace", env=env)
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.time() + timeout
        while time.time() < deadline and self.proc.poll() is None:
            for l in list(self.lines):
                m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", l)
                if m: self.port = int(m.group(1))
            if self.port and any("ready" in l for l in self.lines):
                return
            time.sleep(0.05)
        raise RuntimeError("server did not start: " + "\n".join(self.lines[-5:]))

    def _read(self):
        for l in self.proc.stderr:
            self.lines.append(l.rstrip("\n"))

    def stop(self, timeout=30):
        """SIGTERM, then the exit code (killed after `timeout` seconds: None)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                return None
        return self.proc.returncode

    def rss_kib(self):
        for l in open(f"/proc/{self.proc.pid}/status"):
            if l.startswith("VmRSS:"):
                return int(l.split()[1])
        return 0

    def request(self, method, path, body=None, headers=None, timeout=60):
        """(status, headers dict, body bytes)."""
        c = http.client.HTTPConnection(HOST, self.port, timeout=timeout)
        try:
            data = json.dumps(body).encode() if body is not None else None
            h = {"Content-Type": "application/json"} if data is not None else {}
            h.update(headers or {})
            c.request(method, path, body=data, headers=h)
            r = c.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            c.close()

    def post(self, path, body, headers=None, timeout=60):
        st, h, b = self.request("POST", path, body, headers, timeout)
        try:
            return st, json.loads(b)
        except Exception:
            return st, {"_raw": b[:200]}

    def sse(self, path, body, headers=None, timeout=60):
        return sse_request(self.port, path, body, headers, timeout)

    def metrics(self, headers=None):
        st, h, b = self.request("GET", "/metrics", headers=headers)
        out = {}
        for l in b.decode().splitlines():
            if l.startswith("#") or not l.strip(): continue
            k, v = l.rsplit(" ", 1)
            out[k] = float(v)
        return out

    def raw(self, data, timeout=10):
        """Sends raw bytes on a new connection; returns the socket (the caller closes it)."""
        s = socket.create_connection((HOST, self.port), timeout=timeout)
        s.sendall(data)
        return s


def is_error(st, j, status, code=None):
    e = j.get("error") if isinstance(j, dict) else None
    return (st == status and isinstance(e, dict) and set(e) == {"message", "type", "param", "code"} and
            isinstance(e["message"], str) and e["message"] != "" and (code is None or e["code"] == code))


class Checks:
    def __init__(self):
        self.passed = self.failed = 0

    def __call__(self, name, ok, detail=""):
        print(f"{'ok  ' if ok else 'FAIL'} {name}{': ' + str(detail)[:400] if detail and not ok else ''}", flush=True)
        if ok: self.passed += 1
        else: self.failed += 1
