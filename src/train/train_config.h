// Training options: a JSON file plus `--key value` overrides; every key typed, unknown keys are errors.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace mtp {

struct train_config {
    // what to train on
    std::string model_config;              // config.json of the model (any DeepseekV3 config the engine supports)
    std::string init_model;                // start from this model folder's weights (fine-tuning) instead of random init
    std::string data;                      // folder written by `mtp data prepare`
    std::string tokenizer;                 // tokenizer.json for samples (default: the one in the data's meta.json)
    std::string out_dir = "runs/train";
    int mtp_depth = -1;                    // overrides num_nextn_predict_layers (D) when >= 0
    std::string mtp_style;                 // overrides the config's mtp_style: "sequential" | "parallel" ("": keep)
    // losses and balancing
    double mtp_lambda = 0.3;               // λ, or a schedule below
    std::string mtp_lambda_schedule;       // "STEP:VALUE,..." piecewise constant from STEP on, e.g. "0:0.3,800:0.1"
    double bias_update_speed = 0.001;      // γ of the auxiliary-loss-free balancing
    double bal_alpha = 1e-4;               // α of the sequence-wise balance loss (0: off)
    // optimizer and schedule
    double lr = 2e-3, min_lr = 2e-4;
    int warmup_steps = 30;
    double beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.1, grad_clip = 1.0;
    // batches
    int batch_size = 8, seq_len = 128, grad_accum = 1;
    int pass_tokens = 4096;                // a micro-batch's sequences run through the model together, this many tokens
                                           // at most per pass (bigger products; memory grows with it)
    int64_t seed = 1;
    int max_steps = 500;
    double max_time = 0;                   // seconds of training; 0 = no limit
    int stop_at_step = 0;                  // end this invocation at this step, checkpointed (0 = run to max_steps)
    // logging, evaluation, checkpoints
    int log_every = 1, eval_every = 100, eval_batches = 16;
    int sample_tokens = 40;
    std::string sample_prompt = "The";
    int ckpt_every = 250, keep_checkpoints = 2;
    int threads = 0;                       // 0: OMP default (per rank under mpirun)
    std::string precision = "fp32";        // matrix products: fp32, or bf16 with fp32 accumulation (core/gemm_bf16.h)
    // distributed (mpirun): the global batch is split over the ranks
    int zero_stage = 0;                    // 1: AdamW moments sharded over ranks (ZeRO-1)
    int expert_parallel = 1;               // P > 1: routed experts split over groups of P ranks (all-to-all)
    bool plot = true;
    bool progress = true;                  // progress bar when stderr is a terminal
};

// Every key with its type, for help and for the generic --key value parser.
struct train_key { const char* name; const char* type; const char* help; };
const std::vector<train_key>& train_keys();

// Applies a JSON object of keys; `where` prefixes errors (e.g. the file path).
void train_config_apply_json(train_config& c, const nlohmann::json& j, const std::string& where);
// Applies one `--key value` override (key without dashes, '-' and '_' both accepted).
void train_config_apply_flag(train_config& c, const std::string& key, const std::string& value);
train_config train_config_load(const std::string& path);
nlohmann::json train_config_to_json(const train_config& c);
void train_config_validate(const train_config& c);

// λ at a step (the schedule if given, else the constant).
double mtp_lambda_at(const train_config& c, int step);
// Linear warmup to lr, then cosine decay to min_lr at max_steps.
double lr_at(const train_config& c, int step);

} // namespace mtp
