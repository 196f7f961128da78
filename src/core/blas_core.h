// Which OpenBLAS kernels the process's SGEMM runs, and a warning when the environment narrows them. OpenBLAS (a
// DYNAMIC_ARCH build, as Debian's) picks its kernels when it is loaded, from the CPU or from OPENBLAS_CORETYPE;
// OPENBLAS_CORETYPE=Haswell on an AVX-512 CPU makes it run AVX2 kernels, which on an AMD Zen 5 took 1.5-1.7x the
// time of its AVX-512 ones for a training step (docs/results.md).
#pragma once
#include <string>

#include "core/cpu_features.h"

namespace mtp {

// The kernels OpenBLAS runs, e.g. "SkylakeX" (for logs).
std::string blas_core_name();

// A one-line warning, or "": the kernels are AVX2-class (`corename` Haswell or Zen, any case) on a CPU with AVX-512
// F/BW/DQ/VL because OPENBLAS_CORETYPE (`coretype`, null when unset) asks for them.
std::string blas_narrowed_warning(const cpu_features& f, const std::string& corename, const char* coretype);

} // namespace mtp
