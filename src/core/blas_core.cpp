// The OpenBLAS kernels in use, and the warning when OPENBLAS_CORETYPE narrows them (blas_core.h).
#include "core/blas_core.h"

#include <cctype>
#include <cstring>

extern "C" char* openblas_get_corename(void);
extern "C" char* openblas_get_config(void);

namespace mtp {

std::string blas_core_name() {
    const char* n = openblas_get_corename();
    return n ? n : "unknown";
}

bool blas_dynamic_arch() {
    const char* c = openblas_get_config();
    return c && std::strstr(c, "DYNAMIC_ARCH") != nullptr;
}

std::string blas_narrowed_warning(const cpu_features& f, const std::string& corename, const char* coretype,
                                  bool dynamic) {
    if (!coretype || !dynamic || !(f.avx512f && f.avx512bw && f.avx512dq && f.avx512vl)) return "";
    std::string c;
    for (char ch : corename) c += char(std::tolower(static_cast<unsigned char>(ch)));
    if (c != "haswell" && c != "zen") return "";
    return "warning: OPENBLAS_CORETYPE=" + std::string(coretype) + " makes OpenBLAS run its " + corename +
           " (AVX2) kernels on this AVX-512 CPU; unset it to let OpenBLAS choose (fp32 products can be up to 2x faster)";
}

} // namespace mtp
