#!/usr/bin/env python3
"""Brown corpus (word/TAG tokens) -> plain text: tags stripped, quotes and punctuation re-attached,
paragraphs kept. usage: brown_to_text.py SRC_DIR OUT_DIR"""
import os, re, sys

src, out = sys.argv[1], sys.argv[2]
ATTACH_LEFT = {".", ",", ";", ":", "?", "!", ")", "]", "'", "''", "n't", "'s", "--"}
ATTACH_RIGHT = {"(", "[", "``"}

def detok(words):
    s = ""
    attach_next = True
    for w in words:
        if w == "``": w_out = '"'
        elif w == "''": w_out = '"'
        else: w_out = w
        if attach_next or w in ATTACH_LEFT:
            s += w_out
        else:
            s += " " + w_out
        attach_next = w in ATTACH_RIGHT
    return s

n_files = n_bytes = 0
for name in sorted(os.listdir(src)):
    if not re.fullmatch(r"c[a-r]\d\d", name):
        continue
    paras = []
    with open(os.path.join(src, name), encoding="utf-8", errors="replace") as f:
        for line in f:
            toks = line.split()
            if not toks:
                continue
            words = [t.rsplit("/", 1)[0] if "/" in t else t for t in toks]
            paras.append(detok(words))
    text = "\n\n".join(paras) + "\n"
    with open(os.path.join(out, name + ".txt"), "w", encoding="utf-8") as f:
        f.write(text)
    n_files += 1
    n_bytes += len(text.encode())
print(f"brown: {n_files} documents, {n_bytes / 1e6:.1f} MB of text in {out}")
