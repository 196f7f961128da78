"""One-line-per-check reporting shared by the training tests: `check(name, ok, detail)`, then `finish()` prints
`N passed, M failed` and exits 1 on any failure (or when nothing was checked)."""
import sys

_counts = [0, 0]


def check(name, ok, detail=""):
    print(f"{'ok  ' if ok else 'FAIL'} {name} {detail}", flush=True)
    _counts[0 if ok else 1] += 1


def finish():
    print(f"{_counts[0]} passed, {_counts[1]} failed")
    sys.exit(0 if _counts[1] == 0 and _counts[0] > 0 else 1)
