"""Starts `mtp serve` on a free loopback port for the serving benchmarks: (process, port, start-up lines) once the
server says it is ready; its stderr is drained from then on. Exits with the lines it printed if it never gets ready."""
import re, subprocess, sys, threading, time


def start_server(args, timeout=300):
    p = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
    port, lines = None, []
    deadline = time.time() + timeout
    while time.time() < deadline:
        l = p.stderr.readline()
        if not l: break
        lines.append(l.rstrip())
        m = re.search(r"http://[^:]+:(\d+)", l)
        if m: port = int(m.group(1))
        if "ready" in l: break
    threading.Thread(target=lambda: [None for _ in p.stderr], daemon=True).start()
    if port is None: sys.exit("server did not start: " + "\n".join(lines))
    return p, port, lines
