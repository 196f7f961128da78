// The training loop behind `mtp train`: batches from a prepared dataset, L = L_main + λ/D Σ L_MTP + L_bal,
// AdamW with warmup + cosine, clipping, accumulation, aux-loss-free bias updates, evaluation, samples,
// checkpoints and exact resume.
#pragma once
#include <string>
#include <vector>

#include "train/train_config.h"

namespace mtp {

struct train_result {
    int steps_done = 0;
    double val_main = 0;
    std::vector<double> val_mtp;        // [D]
    double tokens_per_s = 0;
    double unigram_entropy = 0;         // of the validation tokens (nats), for reference
    std::string model_dir;              // final model (HF layout)
};

// tc: the training options (ignored except for overrides when resuming); resume: "" or a checkpoint/run folder;
// overrides: the flags given on the command line, re-applied on top of a resumed run's saved options.
train_result train_run(const train_config& tc, const std::string& resume,
                       const std::vector<std::pair<std::string, std::string>>& overrides);

} // namespace mtp
