#!/usr/bin/env python3
"""The user-facing docs (README.md, docs/*.md) link only to files inside the repository, every relative link
resolves, and nothing points into the development tree outside it (../shared, absolute paths)."""
import os, re, sys

root = os.path.abspath(sys.argv[1])
files = [os.path.join(root, "README.md")] + sorted(
    os.path.join(root, "docs", f) for f in os.listdir(os.path.join(root, "docs")) if f.endswith(".md"))
bad = []
for f in files:
    text = open(f, encoding="utf-8").read()
    if "../shared" in text or "/work/" in text:
        bad.append(f"{f}: mentions a path outside the repository")
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"^[a-z]+://", target) or target.startswith("#"):
            continue
        path = os.path.normpath(os.path.join(os.path.dirname(f), target.split("#")[0]))
        if not path.startswith(os.path.normpath(root) + os.sep) or not os.path.exists(path):
            bad.append(f"{f}: link {target} does not resolve inside the repository")
for b in bad:
    print("FAIL", b)
print(f"{len(files)} files checked, {len(bad)} problems")
sys.exit(1 if bad else 0)
