// CPUID-based feature detection and the process-wide choice of decode kernels.
#include "core/cpu_features.h"

#include <cpuid.h>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "core/error.h"

namespace mtp {

#ifdef MTP_HAVE_AMX_KERNELS
bool gemm_bf16_amx_permitted();                 // core/gemm_bf16_amx.cpp: asks Linux for the AMX tile state once
#endif

namespace {

uint64_t xgetbv0() {
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return (uint64_t(hi) << 32) | lo;
}

cpu_features detect() {
    cpu_features f;
    unsigned a, b, c, d;
    if (!__get_cpuid(0, &a, &b, &c, &d)) return f;
    f.amd = b == 0x68747541 && d == 0x69746e65 && c == 0x444d4163;   // "Auth" "enti" "cAMD"
    if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
    const bool osxsave = c & (1u << 27);
    f.fma = c & (1u << 12);
    f.f16c = c & (1u << 29);
    const uint64_t xcr0 = osxsave ? xgetbv0() : 0;
    const bool ymm_os = (xcr0 & 0x6) == 0x6, zmm_os = (xcr0 & 0xe6) == 0xe6;
    if (__get_cpuid_max(0, nullptr) < 7) return f;
    __cpuid_count(7, 0, a, b, c, d);
    f.avx2 = ymm_os && (b & (1u << 5));
    f.fma = f.fma && ymm_os;
    f.f16c = f.f16c && ymm_os;
    f.avx512f = zmm_os && (b & (1u << 16));
    f.avx512bw = f.avx512f && (b & (1u << 30));
    f.avx512dq = f.avx512f && (b & (1u << 17));
    f.avx512vl = f.avx512f && (b & (1u << 31));
    f.avx512vnni = f.avx512f && (c & (1u << 11));
    const bool amx_os = (xcr0 & 0x60000) == 0x60000;           // XTILECFG + XTILEDATA state enabled
    f.amx_bf16 = amx_os && (d & (1u << 24)) && (d & (1u << 22));
    __cpuid_count(7, 1, a, b, c, d);
    f.avx512bf16 = f.avx512f && (a & (1u << 5));
    f.avx_vnni = ymm_os && (a & (1u << 4));
    return f;
}

isa choose() {
    const char* env = std::getenv("MTP_ISA");
    if (env && *env) {
        const std::string v = env;
        isa want;
        if (v == "avx2") want = isa::avx2;
        else if (v == "avx512") want = isa::avx512;
        else if (v == "avx512bf16") want = isa::avx512bf16;
        else if (v == "amx") want = isa::amx;
        else fail("MTP_ISA", "expected avx2, avx512, avx512bf16 or amx, got " + quoted(v));
        if (!isa_supported(want)) fail("MTP_ISA", v + " is not supported by this CPU");
        return want;
    }
    // AMX where present (its bf16 tiles; on those Xeons vdpbf16ps runs at half the multiply-add rate of fp32 FMAs and
    // the avx512bf16 family was measured slower than avx512 at 2 or more rows). On an AMD CPU with AVX-512 BF16 (Zen 4)
    // vdpbf16ps does two multiply-adds per lane at the FMA rate, and bf16 calls of 8-16 rows took 21-36% less time
    // than with the widening avx512 kernels (docs/results.md), so avx512bf16 there; not measured on Intel CPUs
    // without usable AMX (Cooper Lake, or AMX the OS does not grant), which keep avx512. f32 and q8_0 weights run
    // the avx512 kernels under all three.
    if (isa_supported(isa::amx)) return isa::amx;
    if (cpu_detect().amd && isa_supported(isa::avx512bf16)) return isa::avx512bf16;
    if (isa_supported(isa::avx512)) return isa::avx512;
    return isa::avx2;
}

} // namespace

const cpu_features& cpu_detect() {
    static const cpu_features f = detect();
    return f;
}

const char* isa_name(isa i) {
    switch (i) {
        case isa::avx2: return "avx2";
        case isa::avx2x2: return "avx2x2";
        case isa::avx512: return "avx512";
        case isa::avx512bf16: return "avx512bf16";
        case isa::amx: return "amx";
    }
    return "?";
}

bool isa_supported(isa i) {
    const cpu_features& f = cpu_detect();
    const bool base = f.avx2 && f.fma && f.f16c;
    switch (i) {
        case isa::avx2:
        case isa::avx2x2: return base;
        case isa::avx512:
#ifdef MTP_HAVE_AVX512_KERNELS
            return base && f.avx512f && f.avx512bw && f.avx512vl && f.avx512vnni;
#else
            return false;
#endif
        case isa::avx512bf16:
#ifdef MTP_HAVE_AVX512BF16_KERNELS
            return isa_supported(isa::avx512) && f.avx512bf16;
#else
            return false;
#endif
        case isa::amx:
#ifdef MTP_HAVE_AMX_KERNELS
            return isa_supported(isa::avx512) && f.amx_bf16 && f.avx512bf16 && gemm_bf16_amx_permitted();
#else
            return false;
#endif
    }
    return false;
}

isa isa_active() {
    static const isa chosen = choose();
    return chosen;
}

std::string isa_report() {
    const cpu_features& f = cpu_detect();
    std::string s = std::string("kernels ") + isa_name(isa_active()) + " | cpu:";
    auto add = [&](bool on, const char* name) { if (on) s += std::string(" ") + name; };
    add(f.avx2, "avx2");
    add(f.fma, "fma");
    add(f.f16c, "f16c");
    add(f.avx512f, "avx512f");
    add(f.avx512bw, "avx512bw");
    add(f.avx512dq, "avx512dq");
    add(f.avx512vl, "avx512vl");
    add(f.avx512vnni, "avx512vnni");
    add(f.avx512bf16, "avx512bf16");
    add(f.avx_vnni, "avxvnni");
    add(f.amx_bf16, "amx-bf16");
#ifndef MTP_HAVE_AVX512_KERNELS
    s += " | built without AVX-512 kernels";
#endif
    return s;
}

} // namespace mtp
