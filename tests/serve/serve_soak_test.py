#!/usr/bin/env python3
"""A bounded soak of `mtp serve` (bench/serve_soak.py) on a tiny model made here: 2,000 requests of mixed sizes
(completions streaming and not, chat, tokenize, malformed ones) from 16 clients with 4 slots and 16 idle connections;
it passes when every request got its expected answer, /health answered within 1 s throughout, the server's memory
did not grow after warm-up (not judged in the sanitized build, where ASan's quarantine holds freed memory and
LeakSanitizer checks the exit instead) and it stayed alive and exited 0 on SIGTERM."""
import os, shutil, subprocess, sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serve_util import make_model

mtp, work = sys.argv[1], sys.argv[2]
shutil.rmtree(work, ignore_errors=True)
os.makedirs(work)
env = dict(os.environ, OMP_NUM_THREADS="1")
model, V = make_model(mtp, work, env, ctx=512)
soak = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "bench", "serve_soak.py")
p = subprocess.run([sys.executable, soak, mtp, model, "--requests", "2000", "--clients", "16", "--idle", "16",
                    "--parallel", "4"] + (["--no-rss-check"] if os.environ.get("MTP_SANITIZED") else []),
                   env=env, timeout=600)
sys.exit(p.returncode)
