// Training checkpoints: the model in HF layout (loadable by `mtp logits` and PyTorch) plus optimizer state and
// the training position, written atomically (temp folder + rename), the last K kept.
//
// DIR/checkpoints/step_XXXXXXXX/ config.json, model.safetensors, optimizer.safetensors (adam.m.<name>,
// adam.v.<name>), state.json {step, train_config}. Data order and sampling are pure functions of
// (seed, step), so the step is the whole data/RNG position.
#pragma once
#include <string>
#include <vector>

#include "model/weights.h"
#include "train/adamw.h"
#include "train/train_config.h"

namespace mtp {

struct train_checkpoint {
    model_files model;
    adamw_state opt;
    train_config config;
    int step = 0;
    std::string dir;
};

void checkpoint_save(const std::string& out_dir, const model_files& m, const adamw_state& opt, const train_config& tc,
                     int step);
// `path` is a checkpoint folder or a run folder (its latest checkpoint is taken).
train_checkpoint checkpoint_load(const std::string& path);
void checkpoint_prune(const std::string& out_dir, int keep);
// The complete checkpoints of a run folder (DIR/checkpoints/step_*/ with state.json), oldest first.
std::vector<std::string> list_checkpoint_dirs(const std::string& out_dir);
// Removes what an interrupted writer of this run folder left: FILE.tmp.<pid> files in DIR, DIR/model and
// DIR/checkpoints/*/, and DIR/checkpoints/step_*.tmp folders.
void remove_stale_temps(const std::string& out_dir);

} // namespace mtp
