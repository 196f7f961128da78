// Tests core/blas_core: the warning when OPENBLAS_CORETYPE narrows OpenBLAS's kernels, and the kernels' name.
#include <gtest/gtest.h>

#include <string>

#include "core/blas_core.h"

namespace {

mtp::cpu_features avx512_cpu() {
    mtp::cpu_features f;
    f.avx2 = f.fma = f.f16c = true;
    f.avx512f = f.avx512bw = f.avx512dq = f.avx512vl = true;
    return f;
}

TEST(BlasCore, WarnsWhenTheEnvironmentNarrowsTheKernelsOnAnAvx512Cpu) {
    const mtp::cpu_features z = avx512_cpu();
    const std::string w = mtp::blas_narrowed_warning(z, "Haswell", "Haswell", true);
    EXPECT_NE(w.find("OPENBLAS_CORETYPE=Haswell"), std::string::npos) << w;
    EXPECT_EQ(w.find('\n'), std::string::npos);                      // one line
    EXPECT_NE(mtp::blas_narrowed_warning(z, "Zen", "zen", true), "");
    EXPECT_NE(mtp::blas_narrowed_warning(z, "HASWELL", "HASWELL", true), "");
    EXPECT_EQ(mtp::blas_narrowed_warning(z, "Haswell", nullptr, true), "");   // OpenBLAS's own choice: no warning
    EXPECT_EQ(mtp::blas_narrowed_warning(z, "Haswell", "Haswell", false), "");   // fixed at build time
    EXPECT_EQ(mtp::blas_narrowed_warning(z, "SkylakeX", "SkylakeX", true), "");
    EXPECT_EQ(mtp::blas_narrowed_warning(z, "Cooperlake", "Cooperlake", true), "");
}

TEST(BlasCore, NoWarningWithoutTheWholeAvx512Set) {
    for (int drop = 0; drop < 4; ++drop) {
        mtp::cpu_features f = avx512_cpu();
        bool* bits[] = {&f.avx512f, &f.avx512bw, &f.avx512dq, &f.avx512vl};
        *bits[drop] = false;
        EXPECT_EQ(mtp::blas_narrowed_warning(f, "Haswell", "Haswell", true), "") << "without feature " << drop;
    }
}

TEST(BlasCore, TheLoadedKernelsAreNamed) {
    const std::string n = mtp::blas_core_name();
    EXPECT_FALSE(n.empty());
    EXPECT_NE(n, "unknown");
}

} // namespace
