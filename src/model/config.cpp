// config.json parsing: every key type- and range-checked, errors name the key.
#include "model/config.h"

#include <cmath>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/atomic_file.h"
#include "io/json_read.h"

namespace mtp {

using nlohmann::json;

double model_config::attn_scale() const {
    double m = 1.0;
    if (rope_scaling.yarn && rope_scaling.factor > 1.0)
        m = 0.1 * rope_scaling.mscale_all_dim * std::log(rope_scaling.factor) + 1.0;
    return 1.0 / std::sqrt(double(qk_head_dim())) * m * m;
}

namespace {

struct reader {
    const json& j;
    std::string where;

    [[noreturn]] void bad(const std::string& key, const std::string& what) const {
        fail(where, "key '" + key + "': " + what);
    }
    bool present(const std::string& key) const { return j.contains(key) && !j.at(key).is_null(); }

    int integer(const std::string& key, int min_value, bool required, int def) const {
        if (!present(key)) {
            if (required) bad(key, "missing (required)");
            return def;
        }
        const json& v = j.at(key);
        if (!v.is_number_integer()) bad(key, "expected an integer, got " + v.dump());
        long long x = v.get<long long>();
        if (x < min_value || x > (1LL << 30)) bad(key, "value " + std::to_string(x) + " out of range (min " +
                                                            std::to_string(min_value) + ")");
        return int(x);
    }
    double number(const std::string& key, double def, bool positive) const {
        if (!present(key)) return def;
        const json& v = j.at(key);
        if (!v.is_number()) bad(key, "expected a number, got " + v.dump());
        double x = v.get<double>();
        if (!std::isfinite(x)) bad(key, "must be finite");
        if (positive && !(x > 0)) bad(key, "must be > 0, got " + v.dump());
        return x;
    }
    bool boolean(const std::string& key, bool def) const {
        if (!present(key)) return def;
        const json& v = j.at(key);
        if (!v.is_boolean()) bad(key, "expected true/false, got " + v.dump());
        return v.get<bool>();
    }
    std::string string(const std::string& key, const std::string& def) const {
        if (!present(key)) return def;
        const json& v = j.at(key);
        if (!v.is_string()) bad(key, "expected a string, got " + v.dump());
        return v.get<std::string>();
    }
};

} // namespace

model_config config_from_json(const json& j, const std::string& where) {
    if (!j.is_object()) fail(where, "config must be a JSON object");
    reader r{j, where};
    model_config c;
    c.vocab_size = r.integer("vocab_size", 1, true, 0);
    c.hidden_size = r.integer("hidden_size", 1, true, 0);
    c.num_hidden_layers = r.integer("num_hidden_layers", 1, true, 0);
    c.num_attention_heads = r.integer("num_attention_heads", 1, true, 0);
    c.intermediate_size = r.integer("intermediate_size", 1, true, 0);
    c.n_routed_experts = r.integer("n_routed_experts", 0, false, 0);
    c.moe_intermediate_size = r.integer("moe_intermediate_size", 1, c.n_routed_experts > 0, 1);
    c.first_k_dense_replace = r.integer("first_k_dense_replace", 0, false, 0);
    c.moe_layer_freq = r.integer("moe_layer_freq", 1, false, 1);
    c.n_shared_experts = r.integer("n_shared_experts", 0, false, 0);
    c.num_experts_per_tok = r.integer("num_experts_per_tok", 1, c.n_routed_experts > 0, 1);
    c.n_group = r.integer("n_group", 1, false, 1);
    c.topk_group = r.integer("topk_group", 1, false, 1);
    c.routed_scaling_factor = r.number("routed_scaling_factor", 2.5, true);
    c.norm_topk_prob = r.boolean("norm_topk_prob", true);
    std::string scoring = r.string("scoring_func", "sigmoid");
    if (scoring != "sigmoid" && scoring != "softmax") r.bad("scoring_func", "expected \"sigmoid\" or \"softmax\", got \"" + scoring + "\"");
    c.scoring_sigmoid = scoring == "sigmoid";
    c.topk_method = r.string("topk_method", "noaux_tc");
    if (c.topk_method != "noaux_tc" && c.topk_method != "greedy" && c.topk_method != "group_limited_greedy")
        r.bad("topk_method", "expected \"noaux_tc\", \"greedy\" or \"group_limited_greedy\", got \"" + c.topk_method + "\"");
    c.q_lora_rank = r.integer("q_lora_rank", 1, false, 0);
    c.kv_lora_rank = r.integer("kv_lora_rank", 1, true, 0);
    c.qk_nope_head_dim = r.integer("qk_nope_head_dim", 1, true, 0);
    c.qk_rope_head_dim = r.integer("qk_rope_head_dim", 2, true, 0);
    c.v_head_dim = r.integer("v_head_dim", 1, true, 0);
    if (c.qk_rope_head_dim % 2) r.bad("qk_rope_head_dim", "must be even (interleaved RoPE pairs)");
    c.rope_theta = r.number("rope_theta", 10000.0, true);
    if (r.present("rope_scaling")) {
        const json& rs = j.at("rope_scaling");
        if (!rs.is_object()) r.bad("rope_scaling", "expected an object or null");
        reader q{rs, where + ": key 'rope_scaling'"};
        std::string type = q.string("type", q.string("rope_type", ""));
        if (type != "yarn") r.bad("rope_scaling", "only type \"yarn\" is supported, got \"" + type + "\"");
        c.rope_scaling.yarn = true;
        c.rope_scaling.factor = q.number("factor", 1.0, true);
        if (c.rope_scaling.factor < 1.0) r.bad("rope_scaling", "factor must be >= 1");
        c.rope_scaling.original_max_position_embeddings = q.integer("original_max_position_embeddings", 1, false, 4096);
        c.rope_scaling.beta_fast = q.number("beta_fast", 32.0, true);
        c.rope_scaling.beta_slow = q.number("beta_slow", 1.0, true);
        c.rope_scaling.mscale = q.number("mscale", 0.0, false);
        c.rope_scaling.mscale_all_dim = q.number("mscale_all_dim", 0.0, false);
        if (q.present("attention_factor")) {
            c.rope_scaling.attention_factor = q.number("attention_factor", 0.0, false);
            if (!(c.rope_scaling.attention_factor > 0)) r.bad("rope_scaling", "attention_factor must be > 0");
        }
    }
    c.max_position_embeddings = r.integer("max_position_embeddings", 1, false, 2048);
    c.rms_norm_eps = r.number("rms_norm_eps", 1e-6, true);
    c.initializer_range = r.number("initializer_range", 0.02, true);
    if (r.boolean("tie_word_embeddings", false)) r.bad("tie_word_embeddings", "tied embeddings are not supported (DeepSeek-V3 unties lm_head)");
    c.bos_token_id = r.integer("bos_token_id", 0, false, 0);
    c.eos_token_id = r.integer("eos_token_id", 0, false, 1);
    c.num_nextn_predict_layers = r.integer("num_nextn_predict_layers", 0, false, 0);
    if (c.num_nextn_predict_layers > 64) r.bad("num_nextn_predict_layers", "at most 64 MTP modules");
    const std::string style = r.string("mtp_style", "sequential");
    if (style != "sequential" && style != "parallel")
        r.bad("mtp_style", "expected \"sequential\" or \"parallel\", got \"" + style + "\"");
    c.mtp_parallel = style == "parallel";
    if (c.mtp_parallel && c.num_nextn_predict_layers < 1)
        r.bad("mtp_style", "\"parallel\" needs num_nextn_predict_layers >= 1 (the number of heads), got " +
                               std::to_string(c.num_nextn_predict_layers));

    if (c.n_routed_experts > 0) {
        if (c.num_experts_per_tok > c.n_routed_experts) r.bad("num_experts_per_tok", "exceeds n_routed_experts");
        if (c.n_group > 256) r.bad("n_group", "at most 256 groups");
        if (c.n_routed_experts % c.n_group) r.bad("n_group", "must divide n_routed_experts");
        if (c.topk_group > c.n_group) r.bad("topk_group", "exceeds n_group");
        if (c.num_experts_per_tok > c.topk_group * (c.n_routed_experts / c.n_group))
            r.bad("num_experts_per_tok", "exceeds the experts in topk_group groups");
        if (c.n_group > 1 && c.has_router_bias() && c.n_routed_experts / c.n_group < 2)
            r.bad("n_group", "noaux_tc group scores need at least 2 experts per group");
    }
    if (c.rope_scaling.yarn && !(c.rope_theta > 1.0)) r.bad("rope_theta", "must be > 1 with YaRN rope_scaling");
    if (c.rope_scaling.yarn && !(c.rope_scaling.beta_fast > c.rope_scaling.beta_slow))
        r.bad("rope_scaling", "beta_fast must exceed beta_slow");
    // Size caps keep every int product the kernels form far from overflow, and the total parameter count sane.
    auto cap = [&](const char* key, int v, int mx) { if (v > mx) r.bad(key, "value " + std::to_string(v) + " exceeds the supported maximum " + std::to_string(mx)); };
    cap("vocab_size", c.vocab_size, 1 << 24);
    cap("hidden_size", c.hidden_size, 1 << 16);
    cap("num_hidden_layers", c.num_hidden_layers, 4096);
    cap("num_attention_heads", c.num_attention_heads, 1024);
    cap("intermediate_size", c.intermediate_size, 1 << 20);
    cap("moe_intermediate_size", c.moe_intermediate_size, 1 << 20);
    cap("n_routed_experts", c.n_routed_experts, 1 << 16);
    cap("n_shared_experts", c.n_shared_experts, 64);
    cap("q_lora_rank", c.q_lora_rank, 1 << 16);
    cap("kv_lora_rank", c.kv_lora_rank, 1 << 16);
    cap("qk_nope_head_dim", c.qk_nope_head_dim, 1 << 12);
    cap("qk_rope_head_dim", c.qk_rope_head_dim, 1 << 12);
    cap("v_head_dim", c.v_head_dim, 1 << 12);
    cap("max_position_embeddings", c.max_position_embeddings, 1 << 24);
    {
        const double d = c.hidden_size, H = c.num_attention_heads, dq = c.qk_head_dim(), dv = c.v_head_dim;
        double attn = (c.q_lora_rank ? double(c.q_lora_rank) * (d + H * dq) : d * H * dq) +
                      d * (c.kv_lora_rank + c.qk_rope_head_dim) + double(c.kv_lora_rank) * H * (c.qk_nope_head_dim + dv) +
                      H * dv * d;
        double total = 2.0 * c.vocab_size * d;
        for (int i = 0; i < c.n_layers_total(); ++i) {
            double ffn = c.is_moe_layer(i) ? 3.0 * d * c.moe_intermediate_size * (c.n_routed_experts + c.n_shared_experts) +
                                                 d * c.n_routed_experts
                                           : 3.0 * d * c.intermediate_size;
            total += attn + ffn + (i >= c.num_hidden_layers && !c.mtp_parallel ? 2.0 * d * d : 0.0);
        }
        if (double(c.n_routed_experts) * c.n_layers_total() > double(1 << 20))
            r.bad("n_routed_experts", "more than 2^20 expert tensors in all layers");
        if (total > double(1ull << 33))
            fail(where, "model too large: " + std::to_string(total / 1e9) + "B parameters (this engine keeps fp32 weights in memory)");
    }
    if (c.bos_token_id >= c.vocab_size) r.bad("bos_token_id", "not below vocab_size");
    if (c.eos_token_id >= c.vocab_size) r.bad("eos_token_id", "not below vocab_size");
    long long params = (long long)c.vocab_size * c.hidden_size;
    if (params > (1LL << 34)) r.bad("vocab_size", "vocab_size * hidden_size too large");
    return c;
}

model_config config_load(const std::string& path) {
    if (!std::ifstream(path, std::ios::binary)) fail(path, "cannot open config file");
    return config_from_json(json_read_file(path), path);
}

json config_to_json(const model_config& c) {
    json j;
    j["architectures"] = {"DeepseekV3ForCausalLM"};
    j["model_type"] = "deepseek_v3";
    j["vocab_size"] = c.vocab_size;
    j["hidden_size"] = c.hidden_size;
    j["num_hidden_layers"] = c.num_hidden_layers;
    j["num_attention_heads"] = c.num_attention_heads;
    j["num_key_value_heads"] = c.num_attention_heads;
    j["intermediate_size"] = c.intermediate_size;
    j["moe_intermediate_size"] = c.moe_intermediate_size;
    j["first_k_dense_replace"] = c.first_k_dense_replace;
    j["moe_layer_freq"] = c.moe_layer_freq;
    j["n_routed_experts"] = c.n_routed_experts;
    j["n_shared_experts"] = c.n_shared_experts;
    j["num_experts_per_tok"] = c.num_experts_per_tok;
    j["n_group"] = c.n_group;
    j["topk_group"] = c.topk_group;
    j["routed_scaling_factor"] = c.routed_scaling_factor;
    j["norm_topk_prob"] = c.norm_topk_prob;
    j["scoring_func"] = c.scoring_sigmoid ? "sigmoid" : "softmax";
    j["topk_method"] = c.topk_method;
    j["q_lora_rank"] = c.q_lora_rank > 0 ? json(c.q_lora_rank) : json(nullptr);
    j["kv_lora_rank"] = c.kv_lora_rank;
    j["qk_nope_head_dim"] = c.qk_nope_head_dim;
    j["qk_rope_head_dim"] = c.qk_rope_head_dim;
    j["v_head_dim"] = c.v_head_dim;
    j["rope_theta"] = c.rope_theta;
    if (c.rope_scaling.yarn) {
        j["rope_scaling"] = {{"type", "yarn"},
                             {"factor", c.rope_scaling.factor},
                             {"original_max_position_embeddings", c.rope_scaling.original_max_position_embeddings},
                             {"beta_fast", c.rope_scaling.beta_fast},
                             {"beta_slow", c.rope_scaling.beta_slow},
                             };
        if (c.rope_scaling.mscale != 0) j["rope_scaling"]["mscale"] = c.rope_scaling.mscale;
        if (c.rope_scaling.mscale_all_dim != 0) j["rope_scaling"]["mscale_all_dim"] = c.rope_scaling.mscale_all_dim;
        if (c.rope_scaling.attention_factor > 0) j["rope_scaling"]["attention_factor"] = c.rope_scaling.attention_factor;
    } else {
        j["rope_scaling"] = nullptr;
    }
    j["max_position_embeddings"] = c.max_position_embeddings;
    j["rms_norm_eps"] = c.rms_norm_eps;
    j["initializer_range"] = c.initializer_range;
    j["tie_word_embeddings"] = false;
    j["bos_token_id"] = c.bos_token_id;
    j["eos_token_id"] = c.eos_token_id;
    j["num_nextn_predict_layers"] = c.num_nextn_predict_layers;
    if (c.mtp_parallel) j["mtp_style"] = "parallel";
    j["hidden_act"] = "silu";
    j["attention_bias"] = false;
    j["torch_dtype"] = "float32";
    return j;
}

void config_save(const model_config& c, const std::string& path) {
    write_file_atomic(path, config_to_json(c).dump(2) + "\n");
}

} // namespace mtp
