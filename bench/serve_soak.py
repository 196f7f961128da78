#!/usr/bin/env python3
"""Bounded soak of `mtp serve` on loopback: N requests from C client threads (completions of mixed prompt and
output lengths, streaming and not, chat, tokenize and malformed ones mixed in), I idle connections held open the
whole time, and a monitor that asks /health every 100 ms and samples the server's resident memory. Prints the
request mix by status, throughput, /health latency (p50 / p99 / max) and memory after warm-up vs at the end; exits 1
when /health ever took longer than --health-limit seconds, a request got an unexpected status or no answer, the
resident memory grew past warm-up by more than 10% + 8 MiB, or the server died or did not exit 0 on SIGTERM (under
AddressSanitizer that includes LeakSanitizer's report at exit).
  /usr/bin/python3 bench/serve_soak.py build/mtp runs/default/train/model [--requests 2000] [--clients 16] [--idle 64]
      [--parallel 4]
"""
import argparse, http.client, json, random, re, socket, statistics, subprocess, sys, threading, time

ap = argparse.ArgumentParser()
ap.add_argument("mtp")
ap.add_argument("model")
ap.add_argument("--requests", type=int, default=2000)
ap.add_argument("--clients", type=int, default=16)
ap.add_argument("--idle", type=int, default=64)
ap.add_argument("--health-limit", type=float, default=1.0)
ap.add_argument("--threads", type=int, default=1)
ap.add_argument("--parallel", type=int, default=4)
ap.add_argument("--no-rss-check", action="store_true",
                help="report memory but do not judge it (under AddressSanitizer, whose quarantine holds freed memory)")
a = ap.parse_args()

proc = subprocess.Popen([a.mtp, "serve", "--model", a.model, "--port", "0", "-t", str(a.threads), "--parallel",
                         str(a.parallel)], stderr=subprocess.PIPE, text=True)
port = None
while port is None:
    line = proc.stderr.readline()
    if not line:
        sys.exit("server did not start")
    m = re.search(r"http://[^:]+:(\d+)", line)
    if m:
        port = int(m.group(1))
threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()   # drain stderr
HOST = "127.0.0.1"


def request(method, path, body=None, raw=None, headers=None, timeout=60):
    c = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        h = {"Content-Type": "application/json"} if data is not None else {}
        h.update(headers or {})
        c.request(method, path, body=data, headers=h)
        r = c.getresponse()
        r.read()
        return r.status
    finally:
        c.close()


def raw_send(data):
    s = socket.create_connection((HOST, port), timeout=30)
    try:
        s.sendall(data)
        got = s.recv(4096)
        return int(got.split(b" ")[1]) if got.startswith(b"HTTP/1.1 ") else 0
    finally:
        s.close()


t_end = time.time() + 120
while time.time() < t_end:                       # wait for the model
    try:
        if request("GET", "/health") == 200:
            break
    except OSError:
        pass
    time.sleep(0.1)

idle = [socket.create_connection((HOST, port), timeout=600) for _ in range(a.idle)]
health, stop, rss = [], threading.Event(), []
done_n = [0]


def rss_kib():
    try:
        for l in open(f"/proc/{proc.pid}/status"):
            if l.startswith("VmRSS:"):
                return int(l.split()[1])
    except OSError:
        pass
    return 0


def monitor():
    while not stop.is_set():
        t0 = time.time()
        try:
            st = request("GET", "/health", timeout=30)
        except OSError:
            st = 0
        health.append((time.time() - t0, st))
        rss.append((done_n[0], rss_kib()))
        time.sleep(0.1)


def stream(body):
    """A streaming completion read to its end: 200 only with [DONE] and no error event."""
    c = http.client.HTTPConnection(HOST, port, timeout=60)
    try:
        c.request("POST", "/v1/completions", body=json.dumps(dict(body, stream=True)).encode(),
                  headers={"Content-Type": "application/json"})
        r = c.getresponse()
        data = r.read()
        if r.status != 200:
            return r.status
        return 200 if data.rstrip().endswith(b"data: [DONE]") and b'"error"' not in data else "bad stream"
    finally:
        c.close()


WORDS = "the jury said that he would not be there in the city of a man who was".split()
def prompt(r):
    return " ".join(r.choice(WORDS) for _ in range(r.choice([1, 3, 8, 20, 60])))


# (weight, name, call, accepted statuses)
deep = b"[" * 3000 + b"]" * 3000
kinds = [
    (30, "completion", lambda r: request("POST", "/v1/completions", {"prompt": prompt(r),
                                                                      "max_tokens": r.choice([1, 4, 8, 16, 32]),
                                                                      "temperature": r.choice([0, 0.8]),
                                                                      "seed": r.randint(0, 99)}), {200}),
    (10, "stream", lambda r: stream({"prompt": prompt(r), "max_tokens": r.choice([1, 8, 32]), "temperature": 0}), {200}),
    (15, "chat", lambda r: request("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                                                                    "max_tokens": 4}), {200}),
    (15, "tokenize", lambda r: request("POST", "/tokenize", {"content": "the quick brown fox"}), {200}),
    (6, "bad json", lambda r: request("POST", "/v1/completions", raw=b'{"prompt": "x", '), {400}),
    (6, "deep json", lambda r: request("POST", "/v1/completions", raw=deep), {400}),
    (6, "bad field", lambda r: request("POST", "/v1/completions", {"prompt": "x", "max_tokens": 2 ** 64 - 1}), {400}),
    (4, "bad length", lambda r: raw_send(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n"), {400}),
    (4, "huge length", lambda r: raw_send(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n"), {413}),
    (4, "no route", lambda r: request("GET", "/nope"), {404}),
]
weights = [k[0] for k in kinds]
counts, unexpected, lock = {}, [], threading.Lock()
todo = iter(range(a.requests))


def client(seed):
    r = random.Random(seed)
    while True:
        with lock:
            i = next(todo, None)
        if i is None:
            return
        w, name, call, ok = r.choices(kinds, weights)[0]
        try:
            st = call(r)
        except OSError as e:
            st = f"error {e.__class__.__name__}"
        with lock:
            counts[(name, st)] = counts.get((name, st), 0) + 1
            done_n[0] += 1
            if st not in ok:
                unexpected.append((name, st))


mon = threading.Thread(target=monitor)
mon.start()
t0 = time.time()
threads = [threading.Thread(target=client, args=(s,)) for s in range(a.clients)]
for t in threads: t.start()
for t in threads: t.join()
wall = time.time() - t0
stop.set()
mon.join()
for s in idle: s.close()
alive = proc.poll() is None
proc.terminate()
try:
    rc = proc.wait(30)
except subprocess.TimeoutExpired:
    proc.kill()
    rc = "hung on SIGTERM"

lat = sorted(x for x, st in health)
warm = [k for n, k in rss if n >= a.requests // 4 and k > 0]
late = [k for n, k in rss if n >= 3 * a.requests // 4 and k > 0]
rss_warm, rss_end = (warm[0] if warm else 0), (max(late) if late else 0)
rss_ok = a.no_rss_check or (rss_warm > 0 and rss_end <= rss_warm * 1.10 + 8 * 1024)
bad_health = [x for x in health if x[1] != 200]
print(f"soak: {a.requests} requests from {a.clients} clients in {wall:.1f} s ({a.requests / wall:.1f} requests/s), "
      f"{a.idle} idle connections held open")
print("| request | status | count |\n|---|---:|---:|")
for (name, st), n in sorted(counts.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))):
    print(f"| {name} | {st} | {n} |")
p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1000
print(f"/health: {len(lat)} probes, p50 {p(0.5):.1f} ms, p99 {p(0.99):.1f} ms, max {lat[-1] * 1000:.1f} ms; "
      f"non-200: {len(bad_health)}; unexpected statuses: {len(unexpected)}; server alive at the end: {alive}; "
      f"exit status after SIGTERM: {rc}")
print(f"resident memory: {rss_warm / 1024:.1f} MiB after a quarter of the requests, at most {rss_end / 1024:.1f} MiB in "
      f"the last quarter ({'not judged' if a.no_rss_check else 'ok' if rss_ok else 'GREW'}: limit +10% + 8 MiB)")
ok = alive and rc == 0 and not unexpected and not bad_health and lat[-1] <= a.health_limit and rss_ok
sys.exit(0 if ok else 1)
