// `mtp distill`: self-distillation of a model's MTP modules (flag parsing over src/train/distill.h).
#include <memory>

#include "commands.h"
#include "train/distill.h"

namespace mtp::cli {

void add_distill(CLI::App& app) {
    auto* cmd = app.add_subcommand("distill", "Train only the MTP modules to match the main model (KL, frozen trunk)");
    auto o = std::make_shared<distill_options>();
    cmd->add_option("--model", o->model_dir, "model directory to distil (with MTP modules)")->required();
    cmd->add_option("--data", o->data_dir, "dataset directory (`mtp data prepare`)")->required();
    cmd->add_option("--out", o->out_dir, "output model directory (new or empty); required unless --eval-only")
        ->check(non_empty());
    cmd->add_flag("--eval-only", o->eval_only,
                  "only evaluate the model's MTP modules (KL to the main model, teacher-forced agreement, corpus CE "
                  "per depth) on --eval-batches validation windows; writes nothing");
    cmd->add_option("--steps", o->steps, "optimizer steps (default 300)");
    cmd->add_option("--batch-size", o->batch_size, "windows per step (default 16)");
    cmd->add_option("--seq-len", o->seq_len, "tokens per window (default 128)");
    cmd->add_option("--lr", o->lr, "peak learning rate (default 1e-3)");
    cmd->add_option("--min-lr", o->min_lr, "final learning rate of the cosine schedule (default 1e-4)");
    cmd->add_option("--warmup-steps", o->warmup_steps, "linear warmup steps (default 20)");
    cmd->add_option("--weight-decay", o->weight_decay, "AdamW weight decay (default 0)");
    cmd->add_option("--grad-clip", o->grad_clip, "clip the gradient norm (default 1; 0: off)");
    cmd->add_option("--max-time", o->max_time, "stop after this many seconds (default: no limit)");
    cmd->add_option("--eval-every", o->eval_every, "evaluate every N steps (default 100; 0: only before and after)");
    cmd->add_option("--eval-batches", o->eval_batches, "validation windows per evaluation (default 16)");
    cmd->add_option("--seed", o->seed, "seed of the training windows")->check(non_negative_int());
    cmd->add_option("--precision", o->precision,
                    "matrix products: fp32 (default) or bf16 (bf16 inputs, fp32 accumulation, weights and optimizer; "
                    "fp32 with a message where the CPU has no bf16 kernel)");
    cmd->callback([o] { distill_run(*o); });
}

} // namespace mtp::cli
