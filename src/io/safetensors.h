// safetensors files and sharded checkpoints: strict reading (spec §7) and atomic writing.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace mtp {

struct st_tensor_info {
    std::string name;
    dtype type = dtype::f32;
    std::vector<int64_t> shape;
    uint64_t begin = 0, end = 0;      // byte range inside the data section
};

// One validated safetensors file, fully read into memory.
struct st_file {
    std::string path;
    std::vector<uint8_t> bytes;                       // whole file
    uint64_t data_start = 0;                          // 8 + header length
    std::map<std::string, st_tensor_info> tensors;
    std::map<std::string, std::string> metadata;      // "__metadata__"
};

// Reads and validates one file. Throws mtp::error "<path>: <what>" (naming the tensor/field) on:
// short file, header length too large or past EOF, bad JSON, non-object entries, unknown dtype,
// bad shape/offsets, shape*dtype size != byte range, overlapping ranges, gaps, ranges not ending at EOF,
// duplicate names.
st_file st_read(const std::string& path);

// A checkpoint: one model.safetensors, or shards listed by model.safetensors.index.json (weight_map).
struct checkpoint {
    std::string dir;
    std::string source;               // the file opened: the index json or the single .safetensors
    std::vector<std::unique_ptr<st_file>> files;
    std::map<std::string, std::pair<size_t, st_tensor_info>> index;   // name -> (file idx, info)

    bool has(const std::string& name) const;
    const st_tensor_info& info(const std::string& name) const;          // throws if missing
    // Reads `name` as fp32 into out (resized). Checks the shape equals `expect_shape` when it is non-empty
    // (error names the tensor, expected and found shapes). F8_E4M3 tensors are dequantised with the
    // `<name without .weight>.weight_scale_inv` tensor, 128x128 blocks, partial edge blocks included.
    void read_f32(const std::string& name, std::vector<float>& out,
                  const std::vector<int64_t>& expect_shape = {}) const;
    std::vector<std::string> names() const;
};

// Opens DIR/model.safetensors.index.json if present, else DIR/model.safetensors; `path` may also be a
// .safetensors file. Validates every shard and that the index's files/names agree.
checkpoint checkpoint_open(const std::string& path);

struct st_write_item {
    std::string name;
    std::vector<int64_t> shape;
    const float* data = nullptr;      // fp32 source, converted to `type` on write
    dtype type = dtype::f32;          // f32, f16 or bf16
};

// Writes a safetensors file atomically (temp file in the same folder, then rename).
void st_write(const std::string& path, const std::vector<st_write_item>& items,
              const std::map<std::string, std::string>& metadata = {});

} // namespace mtp
