// Checkpoint write (atomic folder rename), read with validation, pruning to the last K.
#include "train/checkpoint.h"

#include <algorithm>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/atomic_file.h"
#include "io/safetensors.h"
#include "io/json_read.h"

namespace mtp {

namespace fs = std::filesystem;

namespace {
std::string step_name(int step) {
    char b[32];
    std::snprintf(b, sizeof b, "step_%08d", step);
    return b;
}
std::vector<fs::path> list_checkpoints(const std::string& out_dir) {
    std::vector<fs::path> v;
    fs::path d = fs::path(out_dir) / "checkpoints";
    if (!fs::is_directory(d)) return v;
    for (const auto& e : fs::directory_iterator(d)) {
        std::string n = e.path().filename().string();
        if (e.is_directory() && n.rfind("step_", 0) == 0 && n.find(".tmp") == std::string::npos &&
            fs::exists(e.path() / "state.json"))
            v.push_back(e.path());
    }
    std::sort(v.begin(), v.end());
    return v;
}
} // namespace

void checkpoint_save(const std::string& out_dir, const model_files& m, const adamw_state& opt, const train_config& tc,
                     int step) {
    fs::path final_dir = fs::path(out_dir) / "checkpoints" / step_name(step);
    fs::path tmp = final_dir;
    tmp += ".tmp";
    fs::remove_all(tmp);
    fs::create_directories(tmp);
    model_save_dir(m, tmp.string(), "F32");
    std::vector<st_write_item> items;
    for (const auto& p : m.layout.params) {
        if (!p.trainable || opt.m.empty()) continue;
        items.push_back({"adam.m." + p.name, p.shape, opt.m.data() + p.offset, dtype::f32});
        items.push_back({"adam.v." + p.name, p.shape, opt.v.data() + p.offset, dtype::f32});
    }
    st_write((tmp / "optimizer.safetensors").string(), items);
    nlohmann::json st;
    st["format"] = "mtp.cpp train state v1";
    st["step"] = step;
    st["adam_step"] = opt.step;
    st["train_config"] = train_config_to_json(tc);
    write_file_atomic((tmp / "state.json").string(), st.dump(2) + "\n");
    fs::remove_all(final_dir);
    fs::rename(tmp, final_dir);
}

train_checkpoint checkpoint_load(const std::string& path) {
    fs::path dir = path;
    if (!fs::exists(dir / "state.json")) {
        auto v = list_checkpoints(path);
        if (v.empty()) fail(path, "no checkpoint here (expected state.json or checkpoints/step_*/)");
        dir = v.back();
    }
    train_checkpoint ck;
    ck.dir = dir.string();
    const std::string sp = (dir / "state.json").string();
    if (!std::ifstream(sp)) fail(sp, "cannot open");
    nlohmann::json st = json_read_file(sp);
    try {
        ck.step = st.at("step").get<int>();
        ck.opt.step = st.at("adam_step").get<int64_t>();
        train_config_apply_json(ck.config, st.at("train_config"), sp + ": train_config");
    } catch (const nlohmann::json::exception& e) {
        fail(sp, std::string("bad train state: ") + e.what());
    }
    if (ck.step < 1) fail(sp, "step " + std::to_string(ck.step) + " is not a step a checkpoint is saved at (>= 1)");
    if (ck.opt.step < 0 || ck.opt.step > int64_t(ck.step))
        fail(sp, "adam_step " + std::to_string(ck.opt.step) + " is not in 0..step (" + std::to_string(ck.step) + ")");
    ck.model = model_load_dir(dir.string());
    if (ck.opt.step > 0) {
        checkpoint oc = checkpoint_open((dir / "optimizer.safetensors").string());
        ck.opt.m.assign(ck.model.layout.n_floats, 0.0f);
        ck.opt.v.assign(ck.model.layout.n_floats, 0.0f);
        std::vector<float> buf;
        for (const auto& p : ck.model.layout.params) {
            if (!p.trainable) continue;
            for (const char* which : {"m", "v"}) {
                std::string n = std::string("adam.") + which + "." + p.name;
                if (!oc.has(n)) fail(oc.source, "missing optimizer tensor '" + n + "'");
                oc.read_f32(n, buf, p.shape);
                auto& dst = which[0] == 'm' ? ck.opt.m : ck.opt.v;
                std::copy(buf.begin(), buf.end(), dst.begin() + long(p.offset));
            }
        }
    }
    return ck;
}

void checkpoint_prune(const std::string& out_dir, int keep) {
    auto v = list_checkpoints(out_dir);
    for (size_t i = 0; i + size_t(keep) < v.size(); ++i) fs::remove_all(v[i]);
}

std::vector<std::string> list_checkpoint_dirs(const std::string& out_dir) {
    std::vector<std::string> r;
    for (const auto& p : list_checkpoints(out_dir)) r.push_back(p.string());
    return r;
}

namespace {
bool is_temp_file(const std::string& n) {            // NAME.tmp.<digits>
    const size_t i = n.rfind(".tmp.");
    return i != std::string::npos && i + 5 < n.size() &&
           n.find_first_not_of("0123456789", i + 5) == std::string::npos;
}
void remove_temp_files(const fs::path& d) {
    std::error_code ec;
    if (!fs::is_directory(d, ec)) return;
    for (const auto& e : fs::directory_iterator(d, ec))
        if (e.is_regular_file() && is_temp_file(e.path().filename().string())) fs::remove(e.path(), ec);
}
} // namespace

void remove_stale_temps(const std::string& out_dir) {
    const fs::path d = out_dir;
    std::error_code ec;
    remove_temp_files(d);
    remove_temp_files(d / "model");
    const fs::path cks = d / "checkpoints";
    if (!fs::is_directory(cks, ec)) return;
    for (const auto& e : fs::directory_iterator(cks, ec)) {
        const std::string n = e.path().filename().string();
        if (!e.is_directory()) continue;
        if (n.rfind("step_", 0) == 0 && n.size() > 4 && n.compare(n.size() - 4, 4, ".tmp") == 0) fs::remove_all(e.path(), ec);
        else remove_temp_files(e.path());
    }
}

} // namespace mtp
