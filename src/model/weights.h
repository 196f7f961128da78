// Parameter layout: every tensor under its Hugging Face name, as a view into one flat fp32 buffer.
// The same offsets index the gradient buffer and the optimizer state.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "model/config.h"

namespace mtp {

struct param_info {
    std::string name;              // HF name, e.g. "model.layers.3.self_attn.kv_b_proj.weight"
    std::vector<int64_t> shape;    // torch order [out, in]
    size_t offset = 0, size = 0;   // in floats, into the flat buffer
    bool trainable = true;         // false for the router's selection bias
    bool decay = true;             // weight decay applies (not for norms and biases)
};

static constexpr size_t no_param = size_t(-1);

struct swiglu_offsets { size_t gate = no_param, up = no_param, down = no_param; int inner = 0; };

// Offsets of one decoder layer's tensors (trunk layer, or the layer inside an MTP module).
struct layer_offsets {
    int index = 0;                                         // HF layer index
    size_t input_norm = no_param, post_norm = no_param;
    size_t q_a = no_param, q_a_norm = no_param, q_b = no_param, q_proj = no_param;
    size_t kv_a = no_param, kv_a_norm = no_param, kv_b = no_param, o_proj = no_param;
    bool moe = false;
    swiglu_offsets mlp;                                    // dense layer
    size_t router = no_param, router_bias = no_param;      // MoE: gate.weight [E,d], e_score_correction_bias [E]
    std::vector<swiglu_offsets> experts;                   // [E]
    swiglu_offsets shared;                                 // inner 0 when there are no shared experts
    // MTP module only (layer index num_hidden_layers + k - 1)
    size_t enorm = no_param, hnorm = no_param, eh_proj = no_param, shared_head_norm = no_param;
};

struct model_layout {
    std::vector<param_info> params;
    size_t n_floats = 0;
    size_t embed = no_param, final_norm = no_param, lm_head = no_param;
    std::vector<layer_offsets> layers;     // trunk layers [num_hidden_layers]
    std::vector<layer_offsets> mtp;        // MTP modules [D] (parallel heads: no enorm / eh_proj)
    bool parallel_heads = false;           // config mtp_style "parallel"

    const param_info* find(const std::string& name) const;
};

model_layout layout_build(const model_config& c);

// Random init: matrices ~ N(0, initializer_range), norms = 1, router bias = 0.
void weights_init(const model_config& c, const model_layout& L, std::vector<float>& w, uint64_t seed);

// Loads weights from a checkpoint dir/file (sharded, F32/F16/BF16/FP8). Every tensor must be present with
// its exact shape; the MTP layers' embed_tokens/shared_head.head copies are optional and ignored; any other
// unknown tensor is an error.
// storage (optional): how the file stores the model's matrices (lm_head.weight's dtype: "f32", "f16", "bf16", "f8").
void weights_load(const model_layout& L, const std::string& path, std::vector<float>& w, std::string* storage = nullptr);

// Writes DIR/model.safetensors (atomic), with the MTP embed_tokens/shared_head.head copies for other engines.
void weights_save(const model_config& c, const model_layout& L, const std::vector<float>& w, const std::string& file,
                  const std::string& dtype_name = "F32");

// A model directory: DIR/config.json + checkpoint (model_load_dir also accepts a deepseek2 .gguf file).
struct model_files {
    model_config config;
    model_layout layout;
    std::vector<float> weights;
    std::string storage = "f32";   // how the file stored the matrices: f32 | f16 | bf16 | f8 | q8_0 (GGUF)
};
// Every weight is checked to be finite (a NaN or Inf names the tensor and the index, mtp::error) unless
// weights_check_finite(false) was called (`mtp --allow-nonfinite ...`).
model_files model_load_dir(const std::string& dir);
void weights_check_finite(bool on);
void weights_require_finite(const model_layout& L, const std::vector<float>& w, const std::string& source);
// The same model with only its first n MTP modules (modules do not depend on later ones); throws mtp::error naming
// --mtp-layers when n is not in 0..D.
model_files model_keep_mtp(const model_files& m, int n);
void model_save_dir(const model_files& m, const std::string& dir, const std::string& dtype_name = "F32");

} // namespace mtp
