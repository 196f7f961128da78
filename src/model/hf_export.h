// Hugging Face layout for vLLM / SGLang (DeepSeek MTP): config.json (DeepseekV3ForCausalLM, deepseek_v3,
// num_nextn_predict_layers), the MTP layers' embed_tokens / shared_head.head copies, safetensors sharded as
// model-0000i-of-0000N.safetensors + model.safetensors.index.json once over the shard size, tokenizer files.
#pragma once
#include <string>

#include "model/weights.h"

namespace mtp {

struct hf_export_options {
    std::string dtype = "BF16";            // BF16 | F16 | F32 (router bias stays F32)
    double shard_size_mb = 5000;           // a shard is closed before it would pass this size
    std::string tokenizer_dir;             // copy tokenizer.json / tokenizer_config.json from here ("" = none)
};

// Returns the number of shards written (1 = a single model.safetensors).
int hf_export(const model_files& m, const std::string& out_dir, const hf_export_options& o);

} // namespace mtp
