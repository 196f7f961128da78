// What this CPU can run (CPUID + XGETBV, read once) and which decode-kernel ISA the process uses: the widest one
// available, or the one named by the MTP_ISA environment variable (which may only narrow it).
#pragma once
#include <string>

namespace mtp {

struct cpu_features {
    bool avx2 = false, fma = false, f16c = false;               // the baseline this build is compiled for
    bool avx512f = false, avx512bw = false, avx512vl = false;   // with the OS saving zmm state
    bool avx512dq = false;
    bool avx512vnni = false, avx512bf16 = false, avx_vnni = false;
    bool amx_bf16 = false;                                       // AMX tiles + BF16, with the OS saving tile state
    bool amd = false;                                            // vendor AuthenticAMD
};
const cpu_features& cpu_detect();

// Kernel families of the packed GEMV (src/core/gemv.h). avx2x2 is the 16-lane layout computed with pairs of AVX2
// registers: it runs everywhere and lets the tests exercise the 16-lane packing and tiles of the AVX-512 kernels on a
// CPU without AVX-512 (only the instruction wrappers differ). avx512bf16 and amx are avx512 for f32 and q8_0, and run
// bf16 weights with the activations rounded to bf16 too (see gemv.h): on `vdpbf16ps` pairs, or on AMX-BF16 tiles.
enum class isa { avx2, avx2x2, avx512, avx512bf16, amx };

const char* isa_name(isa i);
bool isa_supported(isa i);                 // on this CPU
// The kernels the process uses, chosen at the first call: amx when the CPU also has AMX-BF16 and AVX-512 BF16 (and the
// OS grants the tile state), else avx512bf16 on an AMD CPU with AVX-512 BF16 (Zen 4 and later, where it was measured
// faster), else avx512 when it has AVX-512 F/BW/VL + VNNI, else avx2. MTP_ISA=avx2|avx512|avx512bf16|amx overrides
// (an unsupported or unknown value is an error naming MTP_ISA).
isa isa_active();
// One line for `mtp bench`: the chosen kernels and the CPU's relevant features.
std::string isa_report();

} // namespace mtp
