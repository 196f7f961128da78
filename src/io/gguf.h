// GGUF v3 files (the llama.cpp container, spec §7): a strict reader and an in-memory writer.
//
// Layout (all little-endian): "GGUF", u32 version = 3, i64 tensor_count, i64 kv_count, kv_count pairs
// (string key, u32 value type, value), tensor_count infos (string name, u32 n_dims, i64 ne[n_dims] with
// ne[0] the fastest-varying dimension, u32 ggml type, u64 offset into the data section), padding to
// general.alignment (default 32), then the data section; every tensor offset is a multiple of the alignment.
// A string is u64 length + bytes (no terminator); an array is u32 element type + u64 count + elements.
// Tensor types supported: F32 (0), F16 (1), Q8_0 (8: blocks of 32 along ne[0], fp16 scale + 32 int8).
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/quant.h"      // the Q8_0 block codec (q8_0_quantize_row / q8_0_dequantize_row)

namespace mtp {

enum class gguf_vtype : uint32_t {
    u8 = 0, i8 = 1, u16 = 2, i16 = 3, u32 = 4, i32 = 5, f32 = 6, boolean = 7, string = 8, array = 9,
    u64 = 10, i64 = 11, f64 = 12,
};
const char* gguf_vtype_name(gguf_vtype t);

enum class ggml_type : uint32_t { f32 = 0, f16 = 1, q8_0 = 8 };
const char* ggml_type_name(ggml_type t);
// Bytes of a row of `ne0` elements (ne0 % 32 == 0 required for q8_0).
uint64_t ggml_row_bytes(ggml_type t, int64_t ne0);

struct gguf_kv {
    std::string key;
    gguf_vtype type = gguf_vtype::u32;
    gguf_vtype arr_type = gguf_vtype::u32;     // element type when type == array
    int64_t i = 0;                             // integer and bool scalars (u64 bit-cast)
    double f = 0;                              // f32/f64 scalars
    std::string s;                             // string scalar
    std::vector<int64_t> ai;                   // integer/bool arrays
    std::vector<double> af;                    // float arrays
    std::vector<std::string> as;               // string arrays
    bool is_int() const;                       // any integer type (not bool)
};

struct gguf_tensor {
    std::string name;
    std::vector<int64_t> ne;                   // ggml order: ne[0] fastest
    ggml_type type = ggml_type::f32;
    uint64_t offset = 0;                       // within the data section
    uint64_t bytes = 0;
    int64_t n_elements() const;
};

// One validated GGUF file, read fully into memory.
struct gguf_file {
    std::string path;
    std::vector<uint8_t> bytes;
    uint32_t alignment = 32;
    uint64_t data_start = 0;
    std::vector<gguf_kv> kvs;                  // file order
    std::vector<gguf_tensor> tensors;          // file order
    std::map<std::string, size_t> kv_index, tensor_index;

    const gguf_kv* find(const std::string& key) const;          // nullptr if absent
    const gguf_tensor* tensor(const std::string& name) const;   // nullptr if absent
    // Typed getters: throw "<path>: key '<k>': ..." when missing (required) or of the wrong type.
    int64_t get_int(const std::string& key) const;
    int64_t get_int(const std::string& key, int64_t dflt) const;
    double get_float(const std::string& key) const;
    double get_float(const std::string& key, double dflt) const;
    bool get_bool(const std::string& key, bool dflt) const;
    std::string get_string(const std::string& key) const;
    // Dequantises a tensor to fp32 (row-major, ne[0] fastest).
    void read_f32(const gguf_tensor& t, std::vector<float>& out) const;
};

// Reads and validates: magic, version 3 (big-endian files are named as such), counts bounded by the file
// size, string lengths, value/array types (nested arrays rejected), duplicate keys/tensors,
// general.alignment (u32, power of two), tensor names (1..63 bytes), n_dims 1..4, dims >= 0 with no
// overflow, known ggml type, q8_0 rows a multiple of 32, offsets aligned and inside the data section,
// no overlapping tensors. Every failure throws mtp::error "<path>: <field>: <what>".
gguf_file gguf_read(const std::string& path);

// Builds a GGUF file in memory and writes it atomically.
class gguf_writer {
public:
    void add_u32(const std::string& k, uint32_t v);
    void add_i32(const std::string& k, int32_t v);
    void add_f32(const std::string& k, float v);
    void add_bool(const std::string& k, bool v);
    void add_string(const std::string& k, const std::string& v);
    void add_string_array(const std::string& k, const std::vector<std::string>& v);
    void add_i32_array(const std::string& k, const std::vector<int32_t>& v);
    // `ne` in ggml order; data is fp32 row-major (ne[0] fastest), converted to `type` here.
    void add_tensor(const std::string& name, const std::vector<int64_t>& ne, ggml_type type, const float* data);
    void write(const std::string& path, uint32_t alignment = 32) const;

private:
    std::string kv_bytes_;
    uint64_t n_kv_ = 0;
    struct pending { std::string name; std::vector<int64_t> ne; ggml_type type; std::string data; };
    std::vector<pending> tensors_;
    void key(const std::string& k, gguf_vtype t);
};


} // namespace mtp
