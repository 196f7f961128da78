// `mtp`: the single command-line tool; dispatches to subcommands and turns every error into one line + exit 1.
#include <cstdio>
#include <exception>
#include <string>

#include "commands.h"
#include "core/comm.h"
#include "core/error.h"
#include "model/weights.h"

namespace {

// Under mpirun an error names the rank that hit it and ends every rank (no rank is left waiting in a collective).
void report(const char* what) {
    const auto& w = mtp::comm_world();
    if (w.size > 1) std::fprintf(stderr, "error: rank %d of %d: %s\n", w.rank, w.size, what);
    else std::fprintf(stderr, "error: %s\n", what);
}

int run(int argc, char** argv) {
    CLI::App app{"mtp.cpp: DeepSeek-V3-style models with Multi-Token Prediction"};
    app.require_subcommand(1);
    bool allow_nonfinite = false;
    app.add_flag("--allow-nonfinite", allow_nonfinite, "load models whose weights hold NaN or Inf (default: refuse); give it before the command");
    mtp::cli::add_init(app);
    mtp::cli::add_logits(app);
    mtp::cli::add_grad(app);
    mtp::cli::add_train(app);
    mtp::cli::add_data(app);
    mtp::cli::add_distill(app);
    mtp::cli::add_tokenizer(app);
    mtp::cli::add_generate(app);
    mtp::cli::add_convert(app);
    mtp::cli::add_serve(app);
    bool known = false;
    std::string names;
    for (const auto* s : app.get_subcommands({})) {
        known |= argc >= 2 && s->get_name() == argv[1];
        names += (names.empty() ? "" : ", ") + s->get_name();
    }
    if (argc >= 2 && argv[1][0] != '-' && !known) {
        report(("unknown command '" + std::string(argv[1]).substr(0, 60) + "' (commands: " + names + ")").c_str());
        return 2;
    }
    app.parse_complete_callback([&] { mtp::weights_check_finite(!allow_nonfinite); });
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        if (e.get_exit_code() == 0) return app.exit(e);          // --help
        report((std::string(e.what()) + " (see --help)").c_str());
        return 2;
    } catch (const mtp::error& e) {
        report(e.what());
        return 1;
    } catch (const std::bad_alloc&) {
        report("out of memory");
        return 1;
    } catch (const std::exception& e) {
        report(e.what());
        return 1;
    }
    return 0;
}

} // namespace

int main(int argc, char** argv) {
    mtp::comm_init(&argc, &argv);
    const int code = run(argc, argv);
    if (code != 0 && mtp::comm_world().size > 1) mtp::comm_abort(code);
    mtp::comm_finalize();
    return code;
}
