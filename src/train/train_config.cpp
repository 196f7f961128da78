// Training options: a table of typed keys drives JSON parsing, flag overrides and validation.
#include "train/train_config.h"

#include <cmath>
#include <fstream>
#include <functional>
#include <map>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/json_read.h"

namespace mtp {

using nlohmann::json;

namespace {

enum class kind { str, i32, i64, f64, boolean };

struct key_ref {
    kind k;
    std::function<void*(train_config&)> ptr;
    const char* help;
};

#define KEY(name, kd, help) {#name, {kd, [](train_config& c) -> void* { return &c.name; }, help}}
const std::map<std::string, key_ref>& table() {
    static const std::map<std::string, key_ref> t = {
        KEY(model_config, kind::str, "config.json of the model to train"),
        KEY(init_model, kind::str, "start from this model folder's weights (its config.json is the model's)"),
        KEY(data, kind::str, "dataset folder from `mtp data prepare`"),
        KEY(tokenizer, kind::str, "tokenizer.json for samples (default: the dataset's)"),
        KEY(out_dir, kind::str, "output folder: metrics, checkpoints, final model, plot"),
        KEY(mtp_depth, kind::i32, "number of MTP modules D (overrides the config; -1 keeps it)"),
        KEY(mtp_style, kind::str, "MTP design: sequential (DeepSeek-V3's causal chain) or parallel (independent "
                                  "heads, Gloeckle et al.); overrides the config's mtp_style (empty keeps it)"),
        KEY(mtp_lambda, kind::f64, "MTP loss weight λ"),
        KEY(mtp_lambda_schedule, kind::str, "piecewise-constant λ: STEP:VALUE,... e.g. 0:0.3,800:0.1"),
        KEY(bias_update_speed, kind::f64, "γ: router bias update speed (aux-loss-free balancing)"),
        KEY(bal_alpha, kind::f64, "α: sequence-wise balance loss weight (0 = off)"),
        KEY(lr, kind::f64, "peak learning rate"),
        KEY(min_lr, kind::f64, "final learning rate of the cosine decay"),
        KEY(warmup_steps, kind::i32, "linear warmup steps"),
        KEY(beta1, kind::f64, "AdamW β1"),
        KEY(beta2, kind::f64, "AdamW β2"),
        KEY(eps, kind::f64, "AdamW ε"),
        KEY(weight_decay, kind::f64, "AdamW weight decay (not on norms and biases)"),
        KEY(grad_clip, kind::f64, "clip the global gradient norm to this (0 = off)"),
        KEY(batch_size, kind::i32, "sequences per micro-batch"),
        KEY(seq_len, kind::i32, "tokens per sequence"),
        KEY(grad_accum, kind::i32, "micro-batches per optimizer step"),
        KEY(pass_tokens, kind::i32, "at most this many tokens per forward/backward pass: the sequences of a micro-batch "
                                    "run together, every matrix product over all their rows (memory grows with it; "
                                    "the result does not depend on it beyond rounding)"),
        KEY(seed, kind::i64, "seed of initialisation and data order"),
        KEY(max_steps, kind::i32, "optimizer steps (also the length of the cosine schedule)"),
        KEY(max_time, kind::f64, "stop after this many seconds of training (0 = no limit)"),
        KEY(stop_at_step, kind::i32, "end this run at this step with a checkpoint, as if interrupted (0 = off)"),
        KEY(log_every, kind::i32, "print a step line every N steps"),
        KEY(eval_every, kind::i32, "validate, report expert load and sample every N steps (0 = only at the end)"),
        KEY(eval_batches, kind::i32, "validation windows per evaluation"),
        KEY(sample_tokens, kind::i32, "tokens to generate for each sample (0 = no samples)"),
        KEY(sample_prompt, kind::str, "prompt of the samples"),
        KEY(ckpt_every, kind::i32, "write a checkpoint every N steps (0 = only at the end)"),
        KEY(keep_checkpoints, kind::i32, "keep the last K checkpoints"),
        KEY(threads, kind::i32, "OpenMP threads (0 = default; per rank under mpirun)"),
        KEY(precision, kind::str, "matrix products: fp32, or bf16 (bf16 inputs, fp32 accumulation, fp32 master weights and "
                                  "optimizer; needs AMX or AVX-512 BF16, else fp32 with a message)"),
        KEY(expert_parallel, kind::i32, "under mpirun: split the routed experts over groups of this many ranks (1 = off)"),
        KEY(zero_stage, kind::i32, "under mpirun: 1 shards the AdamW moments over the ranks (ZeRO-1), 0 replicates them"),
        KEY(plot, kind::boolean, "write loss.png with gnuplot at the end"),
        KEY(progress, kind::boolean, "progress bar on a terminal"),
    };
    return t;
}
#undef KEY

const char* kind_name(kind k) {
    switch (k) {
        case kind::str: return "string";
        case kind::i32: case kind::i64: return "integer";
        case kind::f64: return "number";
        case kind::boolean: return "boolean";
    }
    return "?";
}

std::string normalise(std::string k) {
    for (auto& ch : k) if (ch == '-') ch = '_';
    return k;
}

const key_ref& find_key(const std::string& key, const std::string& where) {
    auto it = table().find(normalise(key));
    if (it == table().end()) fail(where, "unknown key '" + key + "' (see `mtp train --help-keys`)");
    return it->second;
}

} // namespace

const std::vector<train_key>& train_keys() {
    static std::vector<train_key> keys = [] {
        std::vector<train_key> v;
        for (const auto& [n, r] : table()) v.push_back({n.c_str(), kind_name(r.k), r.help});
        return v;
    }();
    return keys;
}

void train_config_apply_json(train_config& c, const json& j, const std::string& where) {
    if (!j.is_object()) fail(where, "training config must be a JSON object");
    for (const auto& item : j.items()) {
        const std::string key = item.key();       // not a structured binding: lambdas below capture it (clang 14)
        const json& v = item.value();
        const key_ref& r = find_key(key, where);
        void* p = r.ptr(c);
        auto bad = [&] { fail(where, "key '" + key + "': expected " + kind_name(r.k) + ", got " + v.dump()); };
        switch (r.k) {
            case kind::str: if (!v.is_string()) bad(); *static_cast<std::string*>(p) = v.get<std::string>(); break;
            case kind::i32:
                if (!v.is_number_integer()) bad();
                if (v.get<long long>() < -(1LL << 31) || v.get<long long>() >= (1LL << 31)) bad();
                *static_cast<int*>(p) = v.get<int>();
                break;
            case kind::i64: if (!v.is_number_integer()) bad(); *static_cast<int64_t*>(p) = v.get<int64_t>(); break;
            case kind::f64:
                if (!v.is_number() || !std::isfinite(v.get<double>())) bad();
                *static_cast<double*>(p) = v.get<double>();
                break;
            case kind::boolean: if (!v.is_boolean()) bad(); *static_cast<bool*>(p) = v.get<bool>(); break;
        }
    }
}

void train_config_apply_flag(train_config& c, const std::string& key, const std::string& value) {
    const std::string where = "--" + key;
    const key_ref& r = find_key(key, where);
    json v;
    if (r.k == kind::str) {
        v = value;
    } else {
        try {
            v = json_parse(value, where);
        } catch (const std::exception&) {
            fail(where, std::string("expected ") + kind_name(r.k) + ", got '" + value + "'");
        }
    }
    train_config_apply_json(c, json{{normalise(key), v}}, where);
}

train_config train_config_load(const std::string& path) {
    if (!std::ifstream(path)) fail(path, "cannot open training config");
    json j = json_read_file(path);
    train_config c;
    train_config_apply_json(c, j, path);
    return c;
}

json train_config_to_json(const train_config& c0) {
    train_config c = c0;
    json j;
    for (const auto& [n, r] : table()) {
        void* p = r.ptr(c);
        switch (r.k) {
            case kind::str: j[n] = *static_cast<std::string*>(p); break;
            case kind::i32: j[n] = *static_cast<int*>(p); break;
            case kind::i64: j[n] = *static_cast<int64_t*>(p); break;
            case kind::f64: j[n] = *static_cast<double*>(p); break;
            case kind::boolean: j[n] = *static_cast<bool*>(p); break;
        }
    }
    return j;
}

namespace {
std::vector<std::pair<int, double>> parse_schedule(const std::string& s) {
    std::vector<std::pair<int, double>> out;
    size_t i = 0;
    while (i < s.size()) {
        size_t j = s.find(',', i);
        if (j == std::string::npos) j = s.size();
        std::string item = s.substr(i, j - i);
        size_t colon = item.find(':');
        try {
            if (colon == std::string::npos) throw 0;
            size_t a, b;
            int step = std::stoi(item.substr(0, colon), &a);
            double v = std::stod(item.substr(colon + 1), &b);
            if (a != colon || b != item.size() - colon - 1 || step < 0 || !std::isfinite(v) || v < 0) throw 0;
            if (!out.empty() && step <= out.back().first) throw 0;
            out.push_back({step, v});
        } catch (...) {
            fail("mtp_lambda_schedule", "expected increasing STEP:VALUE pairs like 0:0.3,800:0.1, got '" + item + "'");
        }
        i = j + 1;
    }
    return out;
}
} // namespace

void train_config_validate(const train_config& c) {
    auto need = [](bool ok, const char* key, const char* what) { if (!ok) fail(key, what); };
    need(!c.data.empty(), "data", "required: a dataset folder from `mtp data prepare`");
    need(c.batch_size >= 1, "batch_size", "must be >= 1");
    if (c.precision != "fp32" && c.precision != "bf16")
        fail("precision", "expected fp32 or bf16, got '" + c.precision + "'");
    need(c.seq_len >= 2, "seq_len", "must be >= 2");
    need(c.grad_accum >= 1, "grad_accum", "must be >= 1");
    need(c.pass_tokens >= 1, "pass_tokens", "must be >= 1");
    need(c.max_steps >= 1, "max_steps", "must be >= 1");
    need(c.lr > 0 && c.min_lr >= 0 && c.min_lr <= c.lr, "lr", "need lr > 0 and 0 <= min_lr <= lr");
    need(c.warmup_steps >= 0, "warmup_steps", "must be >= 0");
    need(c.beta1 >= 0 && c.beta1 < 1 && c.beta2 >= 0 && c.beta2 < 1, "beta1", "β1, β2 must be in [0, 1)");
    need(c.eps > 0, "eps", "must be > 0");
    need(c.weight_decay >= 0, "weight_decay", "must be >= 0");
    need(c.grad_clip >= 0, "grad_clip", "must be >= 0");
    need(c.mtp_lambda >= 0, "mtp_lambda", "must be >= 0");
    need(c.bias_update_speed >= 0, "bias_update_speed", "must be >= 0");
    need(c.bal_alpha >= 0, "bal_alpha", "must be >= 0");
    need(c.mtp_depth >= -1 && c.mtp_depth <= 16, "mtp_depth", "must be -1 (keep) or 0..16");
    need(c.mtp_style.empty() || c.mtp_style == "sequential" || c.mtp_style == "parallel", "mtp_style",
         "expected sequential or parallel");
    need(c.max_time >= 0, "max_time", "must be >= 0");
    need(c.stop_at_step >= 0, "stop_at_step", "must be >= 0");
    need(c.log_every >= 1, "log_every", "must be >= 1");
    need(c.eval_every >= 0 && c.ckpt_every >= 0, "eval_every", "eval_every and ckpt_every must be >= 0");
    need(c.eval_batches >= 1, "eval_batches", "must be >= 1");
    need(c.keep_checkpoints >= 1, "keep_checkpoints", "must be >= 1");
    need(c.sample_tokens >= 0, "sample_tokens", "must be >= 0");
    need(c.threads >= 0, "threads", "must be >= 0");
    need(c.zero_stage == 0 || c.zero_stage == 1, "zero_stage", "must be 0 or 1");
    need(c.expert_parallel >= 1, "expert_parallel", "must be >= 1");
    parse_schedule(c.mtp_lambda_schedule);
}

double mtp_lambda_at(const train_config& c, int step) {
    if (c.mtp_lambda_schedule.empty()) return c.mtp_lambda;
    double v = c.mtp_lambda;
    for (const auto& [s, x] : parse_schedule(c.mtp_lambda_schedule))
        if (step >= s) v = x;
    return v;
}

double lr_at(const train_config& c, int step) {
    if (step < c.warmup_steps) return c.lr * (step + 1) / c.warmup_steps;
    int decay = std::max(1, c.max_steps - c.warmup_steps);
    double p = std::min(1.0, double(step - c.warmup_steps) / decay);
    return c.min_lr + 0.5 * (c.lr - c.min_lr) * (1.0 + std::cos(3.141592653589793 * p));
}

} // namespace mtp
