// Self-distillation of the MTP modules (the acceptance lever of self-speculative decoding, as Medusa-2 and EAGLE
// train their drafters on the target's own distribution): the trunk, embeddings and heads are frozen and only the
// D modules train, the loss at depth k being the KL divergence from the main model's next-token distribution at
// position i + k to module k's distribution at position i, on corpus text:
//   L = (1/D) Σ_k mean_i KL(p_main(· | t_0..t_{i+k}) ‖ p_k(· | h^{k-1}_i, t_{i+k}))
// (teacher at temperature 1; the chain of modules is trained end to end, so depth 2's loss also reaches module 1).
// Greedy drafts are accepted when a module's argmax equals the main model's, so the evaluation also reports that
// teacher-forced agreement per depth.
#pragma once
#include <string>
#include <vector>

namespace mtp {

struct distill_options {
    std::string model_dir;             // the model to distil (must have MTP modules)
    std::string data_dir;              // token shards (`mtp data prepare`)
    std::string out_dir;               // where the distilled model goes (OUT/config.json, model.safetensors, ...)
    int steps = 300, batch_size = 16, seq_len = 128, warmup_steps = 20;
    double lr = 1e-3, min_lr = 1e-4, weight_decay = 0.0, grad_clip = 1.0;
    double max_time = 0;               // seconds (0: no limit); the cosine schedule still spans `steps`
    int eval_every = 100, eval_batches = 16, log_every = 25;
    unsigned long long seed = 1;
    bool eval_only = false;            // evaluate (res.before) and stop: nothing trained or written
    std::string precision = "fp32";    // matrix products: fp32, or bf16 (fp32 accumulation, master weights, optimizer)
};

struct distill_eval {
    std::vector<double> kl;            // [D] mean KL(main ‖ module k) on validation windows
    std::vector<double> agree;         // [D] fraction of rows where argmax module k == argmax main
    std::vector<double> ce;            // [D] cross-entropy of module k against the corpus tokens
};

struct distill_result {
    distill_eval before, after;
    int steps_done = 0;
    std::string model_dir;
};

// Throws mtp::error naming the flag or file for bad input (no MTP modules, bad numbers, out == model, ...).
distill_result distill_run(const distill_options& o);

} // namespace mtp
