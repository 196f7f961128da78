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

// Whether OpenBLAS was built with DYNAMIC_ARCH (only then does OPENBLAS_CORETYPE choose its kernels).
bool blas_dynamic_arch();

// A one-line warning, or "": the kernels are AVX2-class (`corename` Haswell or Zen, any case) on a CPU with AVX-512
// F/BW/DQ/VL because OPENBLAS_CORETYPE (`coretype`, null when unset) asks for them in a DYNAMIC_ARCH build
// (`dynamic`; elsewhere the kernels were fixed when OpenBLAS was built and the variable is not the cause).
std::string blas_narrowed_warning(const cpu_features& f, const std::string& corename, const char* coretype,
                                  bool dynamic);

} // namespace mtp
