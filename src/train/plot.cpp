// Writes the loss columns to a .dat file and a gnuplot script next to the PNG, then runs gnuplot.
#include "train/plot.h"
#include "io/json_read.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

namespace mtp {

std::string plot_losses(const std::string& metrics_jsonl, const std::string& png, int n_mtp) {
    if (png.find('\'') != std::string::npos) return "output path contains a quote";
    if (std::system("command -v gnuplot >/dev/null 2>&1") != 0) return "gnuplot not installed";
    std::ifstream f(metrics_jsonl);
    std::string line;
    const std::string train_dat = png + ".train.dat", eval_dat = png + ".eval.dat", gp = png + ".gp";
    std::ofstream tr(train_dat), ev(eval_dat);
    int n_train = 0, n_eval = 0;
    while (std::getline(f, line)) {
        nlohmann::json j;
        try { j = json_parse(line, metrics_jsonl); } catch (...) { continue; }
        auto finite = [&](const char* a, const char* b) {
            if (!j[a].is_number()) return false;
            if (b && (!j[b].is_array() || int(j[b].size()) < n_mtp)) return false;
            for (int k = 0; b && k < n_mtp; ++k) if (!j[b][k].is_number()) return false;
            return true;
        };
        if (j.value("type", "") == "train" && !finite("main", "mtp")) continue;
        if (j.value("type", "") == "eval" && !finite("val_main", "val_mtp")) continue;
        if (j.value("type", "") == "train") {
            tr << j["step"].get<int>() << " " << j["main"].get<double>();
            for (int k = 0; k < n_mtp; ++k) tr << " " << j["mtp"][k].get<double>();
            tr << "\n";
            ++n_train;
        } else if (j.value("type", "") == "eval") {
            ev << j["step"].get<int>() << " " << j["val_main"].get<double>();
            for (int k = 0; k < n_mtp; ++k) ev << " " << j["val_mtp"][k].get<double>();
            ev << "\n";
            ++n_eval;
        }
    }
    tr.close();
    ev.close();
    if (n_train == 0) return "no training steps logged";
    std::ofstream g(gp);
    g << "set terminal pngcairo size 1000,600 noenhanced\nset output '" << png << "'\n"
      << "set xlabel 'step'\nset ylabel 'cross-entropy (nats)'\nset grid\nset key top right\n"
      << "set title 'mtp.cpp training: main head and MTP depths'\n";
    g << "plot '" << train_dat << "' using 1:2 with lines lw 1 title 'train main'";
    for (int k = 0; k < n_mtp; ++k)
        g << ", '' using 1:" << k + 3 << " with lines lw 1 title 'train mtp depth " << k + 1 << "'";
    if (n_eval > 0) {
        g << ", '" << eval_dat << "' using 1:2 with linespoints lw 2 title 'val main'";
        for (int k = 0; k < n_mtp; ++k)
            g << ", '' using 1:" << k + 3 << " with linespoints lw 2 title 'val mtp depth " << k + 1 << "'";
    }
    g << "\n";
    g.close();
    std::string cmd = "gnuplot '" + gp + "' >/dev/null 2>&1";
    if (std::system(cmd.c_str()) != 0) return "gnuplot failed";
    std::filesystem::remove(train_dat);
    std::filesystem::remove(eval_dat);
    std::filesystem::remove(gp);
    return "";
}

} // namespace mtp
