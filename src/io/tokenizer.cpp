// tokenizer.json: strict loading (every supported field type-checked, one-line errors naming file and
// field), compiling the runtime (tokenizer_build) and writing the full HF structure atomically.
#include "io/tokenizer.h"

#include <algorithm>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/atomic_file.h"
#include "io/tokenizer_runtime.h"
#include "io/json_read.h"

namespace mtp {

namespace {

using json = nlohmann::json;

std::string show(const std::string& s) { return quoted(s, 80); }

// Byte-level token text -> bytes; a token with a character outside the byte alphabet decodes to its own
// UTF-8 (as HF's ByteLevel decoder does).
std::string byte_level_decode(const std::string& tok) {
    std::string out;
    uint32_t cp;
    for (size_t i = 0; i < tok.size();) {
        int l = detail::utf8_decode(tok.data(), tok.size(), i, cp);
        int b = l ? detail::char_to_byte(cp) : -1;
        if (b < 0) return tok;
        out += char(b);
        i += size_t(l);
    }
    return out;
}

// ------------------------------------------------------------------------------------ JSON helpers

struct reader {
    const std::string& path;
    int64_t id_limit = int64_t(1) << 30;   // ids are dense: below the entries + added tokens + 65536 (set at load)
    [[noreturn]] void bad(const std::string& field, const std::string& what) const { fail(path, field + ": " + what); }

    const json& need(const json& obj, const char* key, const std::string& field) const {
        auto it = obj.find(key);
        if (it == obj.end()) bad(field, "missing");
        return *it;
    }
    bool get_bool(const json& obj, const char* key, const std::string& parent, bool def) const {
        auto it = obj.find(key);
        if (it == obj.end() || it->is_null()) return def;
        if (!it->is_boolean()) bad(parent + "." + key, "expected true or false");
        return it->get<bool>();
    }
    std::string get_string(const json& v, const std::string& field) const {
        if (!v.is_string()) bad(field, "expected a string");
        return v.get<std::string>();
    }
    int get_id(const json& v, const std::string& field) const {
        if (!v.is_number_integer() || (v.is_number_unsigned() && v.get<uint64_t>() >= uint64_t(id_limit)) ||
            v.get<int64_t>() < 0 || v.get<int64_t>() >= id_limit)
            bad(field, "expected a token id in [0, " + std::to_string(id_limit) +
                           ") (ids are dense: below the vocabulary entries + added tokens + 65536), got " + v.dump());
        return int(v.get<int64_t>());
    }
    std::string type_of(const json& v, const std::string& field) const {
        if (!v.is_object()) bad(field, "expected an object");
        return get_string(need(v, "type", field + ".type"), field + ".type");
    }
};

void check_normalizer(const reader& r, const json& n, const std::string& field) {
    if (n.is_null()) return;
    std::string type = r.type_of(n, field);
    if (type != "Sequence")
        r.bad(field + ".type", "unsupported normalizer '" + type + "' (only null or an empty Sequence)");
    const json& list = r.need(n, "normalizers", field + ".normalizers");
    if (!list.is_array()) r.bad(field + ".normalizers", "expected an array");
    for (size_t i = 0; i < list.size(); ++i) check_normalizer(r, list[i], field + ".normalizers[" + std::to_string(i) + "]");
}

void read_pretok(const reader& r, const json& p, const std::string& field, std::vector<pretokenizer_step>& out,
                 bool& is_sequence, bool top) {
    std::string type = r.type_of(p, field);
    if (type == "Sequence" && top) {
        is_sequence = true;
        const json& list = r.need(p, "pretokenizers", field + ".pretokenizers");
        if (!list.is_array()) r.bad(field + ".pretokenizers", "expected an array");
        for (size_t i = 0; i < list.size(); ++i)
            read_pretok(r, list[i], field + ".pretokenizers[" + std::to_string(i) + "]", out, is_sequence, false);
        return;
    }
    pretokenizer_step s;
    if (type == "Split") {
        s.type = pretokenizer_step::kind::split;
        const json& pat = r.need(p, "pattern", field + ".pattern");
        if (!pat.is_object()) r.bad(field + ".pattern", "expected {\"Regex\": ...} or {\"String\": ...}");
        if (pat.contains("Regex")) {
            s.pattern = r.get_string(pat["Regex"], field + ".pattern.Regex");
        } else if (pat.contains("String")) {
            s.pattern = r.get_string(pat["String"], field + ".pattern.String");
            s.pattern_is_regex = false;
        } else {
            r.bad(field + ".pattern", "expected {\"Regex\": ...} or {\"String\": ...}");
        }
        std::string b = r.get_string(r.need(p, "behavior", field + ".behavior"), field + ".behavior");
        if (!split_behavior_parse(b, s.behavior)) r.bad(field + ".behavior", "unknown behavior '" + b + "'");
        s.invert = r.get_bool(p, "invert", field, false);
    } else if (type == "ByteLevel") {
        s.type = pretokenizer_step::kind::byte_level;
        s.add_prefix_space = r.get_bool(p, "add_prefix_space", field, false);
        s.trim_offsets = r.get_bool(p, "trim_offsets", field, true);
        s.use_regex = r.get_bool(p, "use_regex", field, true);
    } else {
        r.bad(field + ".type", "unsupported pre-tokenizer '" + type + "' (Sequence, Split, ByteLevel)");
    }
    out.push_back(std::move(s));
}

// Indents every line after the first by `pad` spaces (to nest a dump(2) inside hand-written JSON).
std::string nest(const std::string& s, const std::string& pad) {
    std::string out;
    for (char c : s) {
        out += c;
        if (c == '\n') out += pad;
    }
    return out;
}

std::string quote(const std::string& s, const std::string& where) {
    try {
        return json(s).dump();
    } catch (const json::exception&) {
        fail(where, "string " + show(s) + " is not valid UTF-8");
    }
}

} // namespace

// ----------------------------------------------------------------------------------------- build

void tokenizer_build(tokenizer& t) {
    const std::string where = t.source.empty() ? "tokenizer" : t.source;
    auto rt = std::make_shared<detail::tokenizer_runtime>();
    rt->where = where;

    int size = int(t.vocab.size());
    for (const auto& a : t.added_tokens) {
        if (a.id < 0) fail(where, "added_tokens: " + show(a.content) + " has a negative id");
        size = std::max(size, a.id + 1);
    }
    rt->vocab_size = size;
    rt->id_text.assign(size_t(size), std::string());
    rt->id_has.assign(size_t(size), 0);
    rt->id_bytes.assign(size_t(size), std::string());
    rt->vocab_ids.reserve(t.vocab.size());
    for (size_t id = 0; id < t.vocab.size(); ++id) {
        const std::string& tok = t.vocab[id];
        if (tok.empty()) continue;
        if (!rt->vocab_ids.emplace(tok, int(id)).second)
            fail(where, "model.vocab: token " + show(tok) + " appears twice");
        rt->id_text[id] = tok;
        rt->id_has[id] = 1;
        rt->id_bytes[id] = byte_level_decode(tok);
    }
    for (size_t k = 0; k < t.added_tokens.size(); ++k) {
        const auto& a = t.added_tokens[k];
        std::string f = "added_tokens[" + std::to_string(k) + "]";
        if (a.content.empty()) fail(where, f + ".content: empty");
        if (!rt->added_ids.emplace(a.content, a.id).second)
            fail(where, f + ".content: " + show(a.content) + " appears twice");
        rt->id_text[size_t(a.id)] = a.content;
        rt->id_has[size_t(a.id)] = 1;
        rt->id_bytes[size_t(a.id)] = a.content;
        rt->added.push_back(a);
        rt->match_all.add(a.content, int(k));
        if (!a.special) rt->match_nonspecial.add(a.content, int(k));
        if (a.single_word && !rt->word_char)
            rt->word_char = std::make_unique<detail::regex>("[\\p{L}\\p{N}_]", false, where);
    }
    for (int b = 0; b < 256; ++b) {
        auto it = rt->vocab_ids.find(detail::byte_to_char_utf8(uint8_t(b)));
        rt->byte_id[size_t(b)] = it == rt->vocab_ids.end() ? -1 : it->second;
    }
    if (!t.unk_token.empty()) {
        auto it = rt->vocab_ids.find(t.unk_token);
        if (it == rt->vocab_ids.end()) fail(where, "model.unk_token: " + show(t.unk_token) + " is not in model.vocab");
        rt->unk_id = it->second;
    }
    rt->ignore_merges = t.ignore_merges;
    rt->merges.init(t.merges.size());
    std::string merged;
    for (size_t r = 0; r < t.merges.size(); ++r) {
        auto [a, b] = t.merges[r];
        std::string f = "model.merges[" + std::to_string(r) + "]";
        if (a < 0 || b < 0 || size_t(a) >= t.vocab.size() || size_t(b) >= t.vocab.size() || t.vocab[size_t(a)].empty() ||
            t.vocab[size_t(b)].empty())
            fail(where, f + ": names a token id that is not in model.vocab");
        merged = t.vocab[size_t(a)];
        merged += t.vocab[size_t(b)];
        auto it = rt->vocab_ids.find(merged);
        if (it == rt->vocab_ids.end()) fail(where, f + ": merged token " + show(merged) + " is not in model.vocab");
        rt->merges.put(a, b, int(r), it->second);
    }
    const bool seq = t.pre_tokenizer_is_sequence || t.pre_tokenizer.size() != 1;
    rt->pre = std::make_unique<detail::pretokenizer>(
        t.pre_tokenizer, where + ": pre_tokenizer" + std::string(seq ? ".pretokenizers" : ""), seq);
    if (!rt->pre->byte_level())
        fail(where, "pre_tokenizer: no ByteLevel step (only byte-level BPE is supported)");
    t.rt = std::move(rt);
}

// ------------------------------------------------------------------------------------------ load

tokenizer tokenizer_load(const std::string& path) {
    if (!std::ifstream(path, std::ios::binary)) fail(path, "cannot open tokenizer file");
    json doc = json_read_file(path);
    reader r{path};
    if (!doc.is_object()) r.bad("(root)", "expected a JSON object");

    tokenizer t;
    t.source = path;
    const json& model = r.need(doc, "model", "model");
    if (!model.is_object()) r.bad("model", "expected an object");
    if (model.contains("type")) {
        std::string type = r.get_string(model["type"], "model.type");
        if (type != "BPE") r.bad("model.type", "unsupported model type '" + type + "' (only BPE)");
    }
    if (model.contains("dropout") && !model["dropout"].is_null() &&
        !(model["dropout"].is_number() && model["dropout"].get<double>() == 0.0))
        r.bad("model.dropout", "BPE dropout is not supported");
    for (const char* k : {"continuing_subword_prefix", "end_of_word_suffix"})
        if (model.contains(k) && !model[k].is_null() && !(model[k].is_string() && model[k].get<std::string>().empty()))
            r.bad(std::string("model.") + k, "not supported (byte-level BPE uses none)");
    if (r.get_bool(model, "byte_fallback", "model", false))
        r.bad("model.byte_fallback", "not supported (byte-level BPE needs none)");
    t.ignore_merges = r.get_bool(model, "ignore_merges", "model", false);
    if (model.contains("unk_token") && !model["unk_token"].is_null())
        t.unk_token = r.get_string(model["unk_token"], "model.unk_token");

    const json& vocab = r.need(model, "vocab", "model.vocab");
    if (!vocab.is_object()) r.bad("model.vocab", "expected an object {token: id}");
    {
        const size_t n_added = doc.contains("added_tokens") && doc["added_tokens"].is_array() ? doc["added_tokens"].size() : 0;
        r.id_limit = std::min<int64_t>(int64_t(1) << 30, int64_t(vocab.size() + n_added) + 65536);
    }
    for (auto it = vocab.begin(); it != vocab.end(); ++it) {
        int id = r.get_id(it.value(), "model.vocab[" + show(it.key()) + "]");
        if (it.key().empty()) r.bad("model.vocab", "empty token");
        if (size_t(id) >= t.vocab.size()) t.vocab.resize(size_t(id) + 1);
        if (!t.vocab[size_t(id)].empty())
            r.bad("model.vocab", "id " + std::to_string(id) + " used by " + show(t.vocab[size_t(id)]) + " and " + show(it.key()));
        t.vocab[size_t(id)] = it.key();
    }
    std::unordered_map<std::string, int> ids;
    ids.reserve(t.vocab.size());
    for (size_t i = 0; i < t.vocab.size(); ++i)
        if (!t.vocab[i].empty()) ids.emplace(t.vocab[i], int(i));
    auto lookup = [&](const std::string& tok, const std::string& field) {
        auto it = ids.find(tok);
        if (it == ids.end()) r.bad(field, "unknown token " + show(tok) + " (not in model.vocab)");
        return it->second;
    };
    if (model.contains("merges") && !model["merges"].is_null()) {
        const json& merges = model["merges"];
        if (!merges.is_array()) r.bad("model.merges", "expected an array");
        t.merges.reserve(merges.size());
        for (size_t i = 0; i < merges.size(); ++i) {
            const json& m = merges[i];
            std::string f = "model.merges[" + std::to_string(i) + "]";
            std::string a, b;
            if (m.is_string()) {
                const std::string& s = m.get_ref<const std::string&>();
                size_t sp = s.find(' ');
                if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos)
                    r.bad(f, "expected \"left right\" with exactly one space, got " + show(s));
                a = s.substr(0, sp);
                b = s.substr(sp + 1);
            } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
                a = m[0].get<std::string>();
                b = m[1].get<std::string>();
                t.merges_as_pairs = true;
            } else {
                r.bad(f, "expected \"left right\" or [left, right]");
            }
            t.merges.emplace_back(lookup(a, f), lookup(b, f));
        }
    }

    if (doc.contains("added_tokens") && !doc["added_tokens"].is_null()) {
        const json& list = doc["added_tokens"];
        if (!list.is_array()) r.bad("added_tokens", "expected an array");
        for (size_t i = 0; i < list.size(); ++i) {
            std::string f = "added_tokens[" + std::to_string(i) + "]";
            const json& a = list[i];
            if (!a.is_object()) r.bad(f, "expected an object");
            added_token at;
            at.id = r.get_id(r.need(a, "id", f + ".id"), f + ".id");
            at.content = r.get_string(r.need(a, "content", f + ".content"), f + ".content");
            at.single_word = r.get_bool(a, "single_word", f, false);
            at.lstrip = r.get_bool(a, "lstrip", f, false);
            at.rstrip = r.get_bool(a, "rstrip", f, false);
            at.normalized = r.get_bool(a, "normalized", f, false);
            at.special = r.get_bool(a, "special", f, false);
            t.added_tokens.push_back(std::move(at));
        }
    }

    if (doc.contains("normalizer")) {
        check_normalizer(r, doc["normalizer"], "normalizer");
        t.normalizer_json = doc["normalizer"].dump();
    }
    const json& pre = r.need(doc, "pre_tokenizer", "pre_tokenizer");
    if (pre.is_null()) r.bad("pre_tokenizer", "null (byte-level BPE needs a ByteLevel pre-tokenizer)");
    t.pre_tokenizer_is_sequence = false;
    read_pretok(r, pre, "pre_tokenizer", t.pre_tokenizer, t.pre_tokenizer_is_sequence, true);
    const json& dec = r.need(doc, "decoder", "decoder");
    if (dec.is_null() || r.type_of(dec, "decoder") != "ByteLevel")
        r.bad("decoder", "unsupported decoder (only ByteLevel)");
    t.decoder_json = dec.dump();
    if (doc.contains("post_processor")) t.post_processor_json = doc["post_processor"].dump();

    tokenizer_build(t);
    return t;
}

// ------------------------------------------------------------------------------------------ save

std::string tokenizer_to_json(const tokenizer& t) {
    const std::string where = t.source.empty() ? "tokenizer" : t.source;
    auto parse_kept = [&](const std::string& s, const char* field) {
        return json_parse(s, where + ": " + field);
    };
    std::vector<const added_token*> added;
    for (const auto& a : t.added_tokens) added.push_back(&a);
    std::stable_sort(added.begin(), added.end(), [](auto* x, auto* y) { return x->id < y->id; });

    std::string s = "{\n  \"version\": \"1.0\",\n  \"truncation\": null,\n  \"padding\": null,\n  \"added_tokens\": [";
    for (size_t i = 0; i < added.size(); ++i) {
        const auto& a = *added[i];
        s += i ? ",\n    {\n" : "\n    {\n";
        s += "      \"id\": " + std::to_string(a.id) + ",\n";
        s += "      \"content\": " + quote(a.content, where) + ",\n";
        s += std::string("      \"single_word\": ") + (a.single_word ? "true" : "false") + ",\n";
        s += std::string("      \"lstrip\": ") + (a.lstrip ? "true" : "false") + ",\n";
        s += std::string("      \"rstrip\": ") + (a.rstrip ? "true" : "false") + ",\n";
        s += std::string("      \"normalized\": ") + (a.normalized ? "true" : "false") + ",\n";
        s += std::string("      \"special\": ") + (a.special ? "true" : "false") + "\n    }";
    }
    s += added.empty() ? "],\n" : "\n  ],\n";
    s += "  \"normalizer\": " + nest(parse_kept(t.normalizer_json, "normalizer").dump(2), "  ") + ",\n";

    nlohmann::ordered_json steps = nlohmann::ordered_json::array();
    for (const auto& st : t.pre_tokenizer) {
        nlohmann::ordered_json j;
        if (st.type == pretokenizer_step::kind::split) {
            j["type"] = "Split";
            j["pattern"][st.pattern_is_regex ? "Regex" : "String"] = st.pattern;
            j["behavior"] = split_behavior_name(st.behavior);
            j["invert"] = st.invert;
        } else {
            j["type"] = "ByteLevel";
            j["add_prefix_space"] = st.add_prefix_space;
            j["trim_offsets"] = st.trim_offsets;
            j["use_regex"] = st.use_regex;
        }
        steps.push_back(std::move(j));
    }
    nlohmann::ordered_json pre;
    if (t.pre_tokenizer_is_sequence || steps.size() != 1) {
        pre["type"] = "Sequence";
        pre["pretokenizers"] = std::move(steps);
    } else {
        pre = steps[0];
    }
    try {
        s += "  \"pre_tokenizer\": " + nest(pre.dump(2), "  ") + ",\n";
    } catch (const json::exception&) {
        fail(where, "pre_tokenizer: pattern is not valid UTF-8");
    }
    s += "  \"post_processor\": " + nest(parse_kept(t.post_processor_json, "post_processor").dump(2), "  ") + ",\n";
    s += "  \"decoder\": " + nest(parse_kept(t.decoder_json, "decoder").dump(2), "  ") + ",\n";
    s += "  \"model\": {\n    \"type\": \"BPE\",\n    \"dropout\": null,\n";
    s += "    \"unk_token\": " + (t.unk_token.empty() ? std::string("null") : quote(t.unk_token, where)) + ",\n";
    s += "    \"continuing_subword_prefix\": null,\n    \"end_of_word_suffix\": null,\n";
    s += "    \"fuse_unk\": false,\n    \"byte_fallback\": false,\n";
    s += std::string("    \"ignore_merges\": ") + (t.ignore_merges ? "true" : "false") + ",\n";
    s += "    \"vocab\": {";
    bool first = true;
    for (size_t id = 0; id < t.vocab.size(); ++id) {
        if (t.vocab[id].empty()) continue;
        s += first ? "\n      " : ",\n      ";
        first = false;
        s += quote(t.vocab[id], where) + ": " + std::to_string(id);
    }
    s += first ? "},\n" : "\n    },\n";
    // "a b" strings unless a token contains a space (then [a, b] pairs, tokenizers >= 0.20).
    bool pairs = t.merges_as_pairs;
    for (const auto& [a, b] : t.merges)
        if (t.vocab.at(size_t(a)).find(' ') != std::string::npos || t.vocab.at(size_t(b)).find(' ') != std::string::npos)
            pairs = true;
    s += "    \"merges\": [";
    for (size_t i = 0; i < t.merges.size(); ++i) {
        const std::string& a = t.vocab.at(size_t(t.merges[i].first));
        const std::string& b = t.vocab.at(size_t(t.merges[i].second));
        s += i ? ",\n      " : "\n      ";
        if (pairs) {
            s += '[';
            s += quote(a, where);
            s += ", ";
            s += quote(b, where);
            s += ']';
        } else {
            s += quote(a + ' ' + b, where);
        }
    }
    s += t.merges.empty() ? "]\n" : "\n    ]\n";
    s += "  }\n}\n";
    return s;
}

void tokenizer_save(const tokenizer& t, const std::string& path) { write_file_atomic(path, tokenizer_to_json(t)); }

} // namespace mtp
