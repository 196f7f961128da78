// Loss curves from a metrics.jsonl to a PNG, drawn by gnuplot (Debian gnuplot-nox).
#pragma once
#include <string>

namespace mtp {

// Returns "" on success, else why no plot was made (gnuplot missing, no data).
std::string plot_losses(const std::string& metrics_jsonl, const std::string& png, int n_mtp);

} // namespace mtp
