// Tests for byte-level BPE training: exact vocab size, merges equal a naive O(n^2) trainer, determinism
// across runs and thread counts, save -> load -> same encoding and round trip, special tokens, errors.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <vector>

#include <unistd.h>

#include "core/error.h"
#include "io/bpe_train.h"
#include "io/pretokenizer.h"
#include "io/tokenizer.h"

namespace fs = std::filesystem;

namespace {

std::string tmp_dir() {
    static std::string d = [] {
        std::string p = (fs::temp_directory_path() / ("mtp_bpe_test_" + std::to_string(getpid()))).string();
        fs::remove_all(p);            // a folder left by an earlier process with the same pid would add its files
        fs::create_directories(p);
        return p;
    }();
    return d;
}

void write_text(const std::string& path, const std::string& text) {
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    f << text;
}

std::string corpus_text(unsigned seed, size_t words) {
    static const char* vocab[] = {"the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "tokenizer",
                                  "training", "data", "1234", "3.14", "日本語", "数据", "😀", "naïve", "café",
                                  "\n", "\n\n", "  ", "\t", ",", ".", "!", "don't", "it's"};
    std::mt19937 rng(seed);
    std::string s;
    for (size_t i = 0; i < words; ++i) {
        s += vocab[rng() % (sizeof vocab / sizeof *vocab)];
        if (rng() % 3) s += ' ';
    }
    return s;
}

// Naive trainer on the same pre-tokens: recount every pair each step, most frequent first, ties to the
// smaller (left id, right id).
std::vector<std::pair<int, int>> naive_merges(const std::string& text, const std::string& pre, int n_merges) {
    mtp::detail::pretokenizer p(mtp::tokenizer_pretokenizer_steps(pre), "naive");
    std::vector<mtp::detail::piece> pieces;
    p.split(text, pieces);
    std::map<std::string, long> counts;
    for (auto x : pieces) counts[std::string(x)]++;
    std::vector<std::pair<std::vector<int>, long>> words;
    for (auto& [w, c] : counts) {
        std::vector<int> s;
        for (unsigned char ch : w) s.push_back(ch);
        words.push_back({s, c});
    }
    std::vector<std::pair<int, int>> merges;
    int next = 256;
    for (int m = 0; m < n_merges; ++m) {
        std::map<std::pair<int, int>, long> pc;
        for (auto& [s, c] : words)
            for (size_t i = 0; i + 1 < s.size(); ++i) pc[{s[i], s[i + 1]}] += c;
        std::pair<int, int> best{-1, -1};
        long bc = 0;
        for (auto& [k, c] : pc)
            if (c > bc) { bc = c; best = k; }   // map order: first maximum is the smallest pair
        if (bc == 0) break;
        merges.push_back(best);
        for (auto& [s, c] : words) {
            std::vector<int> o;
            for (size_t i = 0; i < s.size();) {
                if (i + 1 < s.size() && s[i] == best.first && s[i + 1] == best.second) { o.push_back(next); i += 2; }
                else o.push_back(s[i++]);
            }
            s = o;
        }
        ++next;
    }
    return merges;
}

} // namespace

TEST(BpeTrain, MatchesNaiveTrainer) {
    // Word-like text, and random words over a small alphabet (many equal counts: tie-breaking matters).
    std::mt19937 rng(5);
    std::string random_words;
    for (int i = 0; i < 4000; ++i) {
        for (unsigned k = 0, n = 1 + rng() % 9; k < n; ++k) random_words += "abcdefg"[rng() % 7];
        random_words += " \n"[rng() % 8 == 0];
    }
    for (const std::string& text : {corpus_text(1, 3000), random_words}) {
        for (std::string pre : {"deepseek", "gpt2"}) {
            mtp::tokenizer_train_options opt;
            opt.vocab_size = 256 + 300 + 2;
            opt.pre_tokenizer = pre;
            auto t = mtp::tokenizer_train_texts(opt, {text});
            EXPECT_EQ(t.merges, naive_merges(text, pre, 300)) << pre;
        }
    }
}

TEST(BpeTrain, ExactSizeDeterministicRoundTrip) {
    std::vector<std::string> texts = {corpus_text(2, 20000), corpus_text(3, 5000)};
    mtp::tokenizer_train_options opt;
    opt.vocab_size = 700;
    opt.threads = 1;
    mtp::tokenizer_train_stats st;
    auto a = mtp::tokenizer_train_texts(opt, texts, &st);
    opt.threads = 2;
    auto b = mtp::tokenizer_train_texts(opt, texts);
    EXPECT_EQ(mtp::tokenizer_vocab_size(a), 700);
    EXPECT_FALSE(st.exhausted);
    EXPECT_EQ(mtp::tokenizer_to_json(a), mtp::tokenizer_to_json(b));   // same file whatever the thread count
    // Byte tokens first, then merges, then the special tokens.
    EXPECT_EQ(mtp::tokenizer_token_id(a, mtp::detail::byte_to_char_utf8('a')), 'a');
    EXPECT_EQ(mtp::tokenizer_token_id(a, "<｜begin▁of▁sentence｜>"), 698);
    EXPECT_EQ(mtp::tokenizer_token_id(a, "<｜end▁of▁sentence｜>"), 699);

    std::string p = tmp_dir() + "/trained.json";
    mtp::tokenizer_save(a, p);
    auto c = mtp::tokenizer_load(p);
    EXPECT_EQ(mtp::tokenizer_vocab_size(c), 700);
    std::string sample = corpus_text(9, 400) + "<｜end▁of▁sentence｜>" + corpus_text(10, 50) + "\xff\xfe";
    auto ids = mtp::tokenizer_encode(c, sample);
    EXPECT_EQ(ids, mtp::tokenizer_encode(a, sample));
    EXPECT_EQ(mtp::tokenizer_decode(c, ids), sample);
    EXPECT_NE(std::find(ids.begin(), ids.end(), 699), ids.end());
    EXPECT_LT(ids.size(), sample.size() / 2);   // the merges compress (measured 520 ids for 2147 bytes: 0.24)
}

TEST(BpeTrain, SpecialTokensAreCutFromTheCorpus) {
    std::string text;
    for (int i = 0; i < 200; ++i) text += "<eos>abc ";
    mtp::tokenizer_train_options opt;
    opt.vocab_size = 300;
    opt.special_tokens = {"<eos>"};
    opt.pre_tokenizer = "gpt2";
    auto t = mtp::tokenizer_train_texts(opt, {text});
    for (const auto& v : t.vocab) EXPECT_EQ(v.find("eos"), std::string::npos) << v;
    EXPECT_EQ(mtp::tokenizer_token_id(t, "<eos>"), mtp::tokenizer_vocab_size(t) - 1);
}

TEST(BpeTrain, FilesDirectoriesAndErrors) {
    std::string dir = tmp_dir() + "/corpus";
    fs::create_directories(dir + "/sub");
    write_text(dir + "/a.txt", corpus_text(4, 2000));
    write_text(dir + "/sub/b.txt", corpus_text(5, 2000));
    auto files = mtp::tokenizer_collect_files({dir});
    ASSERT_EQ(files.size(), 2u);
    mtp::tokenizer_train_options opt;
    opt.vocab_size = 400;
    mtp::tokenizer_train_stats st;
    auto t = mtp::tokenizer_train(opt, files, &st);
    EXPECT_EQ(st.files, 2u);
    EXPECT_EQ(mtp::tokenizer_vocab_size(t), 400);

    EXPECT_THROW(mtp::tokenizer_collect_files({dir + "/missing.txt"}), mtp::error);
    write_text(dir + "/empty.txt", "");
    EXPECT_THROW(mtp::tokenizer_train(opt, {dir + "/empty.txt"}), mtp::error);
    auto small = opt;
    small.vocab_size = 257;
    try {
        mtp::tokenizer_train(small, files);
        ADD_FAILURE();
    } catch (const mtp::error& e) {
        EXPECT_NE(std::string(e.what()).find("below the 256 byte tokens + 2 special tokens"), std::string::npos);
    }
    auto dup = opt;
    dup.special_tokens = {"<s>", "<s>"};
    EXPECT_THROW(mtp::tokenizer_train(dup, files), mtp::error);
    auto bad = opt;
    bad.pre_tokenizer = "bert";
    EXPECT_THROW(mtp::tokenizer_train(bad, files), mtp::error);
    // A tiny corpus runs out of pairs: smaller vocabulary, flagged.
    auto big = opt;
    big.vocab_size = 5000;
    auto tiny = mtp::tokenizer_train_texts(big, {"abc abc"}, &st);
    EXPECT_TRUE(st.exhausted);
    EXPECT_LT(mtp::tokenizer_vocab_size(tiny), 5000);   // 256 bytes + 2 specials + 3 merges = 261 here
}
