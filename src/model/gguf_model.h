// A model as a llama.cpp GGUF (architecture `deepseek2`, spec §7): export and loading back.
//
// Mapping (torch [out, in] becomes ggml ne [in, out], same bytes): token_embd, output_norm, output,
// blk.N.{attn_norm, attn_q_a, attn_q_a_norm, attn_q_b | attn_q, attn_kv_a_mqa, attn_kv_a_norm,
// attn_k_b (kv_b rows [0,nope) of each head, transposed: ne [nope, kv_lora, H]),
// attn_v_b (rows [nope, nope+v) of each head: ne [kv_lora, v, H]), attn_output, ffn_norm,
// dense ffn_{gate,up,down} | MoE ffn_gate_inp, exp_probs_b.bias, ffn_{gate,up,down}_exps (experts stacked
// as the outermost dimension), ffn_{gate,up,down}_shexp}; MTP layers (N >= num_hidden_layers) also
// blk.N.nextn.{eh_proj, enorm, hnorm, shared_head_norm, embed_tokens, shared_head_head}.
// block_count = num_hidden_layers + D and deepseek2.nextn_predict_layers = D, as llama.cpp does.
#pragma once
#include <string>
#include <vector>

#include "model/weights.h"

namespace mtp {

struct gguf_export_options {
    std::string type = "f32";          // f32 | f16 | q8_0 (norms, router and router bias stay f32)
    std::string tokenizer_json;        // "" = vocabulary-less file (tokenizer.ggml.model = "none")
    std::string name = "mtp.cpp model";
};

// Throws mtp::error "<where>: <why>" for a config llama.cpp cannot represent (moe_layer_freq that makes a
// layer after leading_dense_block_count dense). Returns warnings for configs whose trunk loads in llama.cpp
// but whose MTP layers its draft-mtp path cannot use (D != 1, q_lora_rank null, dense MTP layer).
std::vector<std::string> gguf_export_check(const model_config& c, const std::string& where);

// Writes `out` (atomic). Returns the warnings of gguf_export_check plus tokenizer notes.
std::vector<std::string> gguf_export(const model_files& m, const std::string& out, const gguf_export_options& o);

// Reads config + weights from a deepseek2 GGUF (inverse mapping; f16/q8_0 dequantised). Float keys stored
// as float32 are rounded back to 7 significant digits, which restores the usual decimal config values.
model_files model_load_gguf(const std::string& path);

} // namespace mtp
