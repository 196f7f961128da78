// safetensors: strict validating reader, sharded checkpoints, FP8 block dequantisation, atomic writer.
#include "io/safetensors.h"

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <limits>
#include <new>
#include <set>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/json_read.h"

namespace mtp {

static_assert(std::endian::native == std::endian::little, "safetensors data is little-endian");

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

constexpr uint64_t max_header_bytes = 100ull * 1000 * 1000;   // 100 MB
constexpr uint64_t max_index_bytes = 100ull * 1000 * 1000;
constexpr int max_json_depth = 16;
constexpr int64_t fp8_block = 128;

std::string show(const std::string& s) { return quoted(s, 160); }

// Replaces line breaks and other control bytes so a foreign message stays on one line.
std::string one_line(std::string s) {
    for (char& c : s)
        if ((unsigned char)c < 0x20 || c == 0x7F) c = ' ';
    return s;
}

std::string brief(const json& v) {
    std::string d = v.dump(-1, ' ', false, json::error_handler_t::replace);
    if (d.size() > 60) d = d.substr(0, 60) + "...";
    return one_line(d);
}

std::string shape_str(const std::vector<int64_t>& shape) {
    std::string s = "[";
    for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + "]";
}

std::string range_str(uint64_t b, uint64_t e) {
    return "[" + std::to_string(b) + "," + std::to_string(e) + ")";
}

std::string tensor_where(const std::string& name) { return "tensor " + show(name); }

struct file_closer {
    std::FILE* f = nullptr;
    ~file_closer() { if (f) std::fclose(f); }
};

void read_exact(std::FILE* f, uint8_t* dst, uint64_t n, const std::string& path) {
    while (n > 0) {
        const size_t chunk = size_t(std::min<uint64_t>(n, uint64_t(1) << 30));
        const size_t got = std::fread(dst, 1, chunk, f);
        if (got != chunk) fail(path, "short read (file changed or I/O error)");
        dst += got;
        n -= got;
    }
}

// Opens a regular file for reading and returns its size.
std::FILE* open_regular(const std::string& path, uint64_t& size) {
    std::FILE* f = std::fopen(path.c_str(), "rb");
    if (!f) fail(path, std::string("cannot open: ") + std::strerror(errno));
    struct stat st {};
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        std::fclose(f);
        fail(path, "not a regular file");
    }
    size = uint64_t(st.st_size);
    return f;
}

// Rejects nesting deeper than max_json_depth before the parser sees the text.
void check_nesting(const std::string& where, const char* p, size_t n) {
    int depth = 0;
    bool in_string = false;
    for (size_t i = 0; i < n; ++i) {
        const char c = p[i];
        if (in_string) {
            if (c == '\\') ++i;
            else if (c == '"') in_string = false;
        } else if (c == '"') {
            in_string = true;
        } else if (c == '{' || c == '[') {
            if (++depth > max_json_depth)
                fail(where, "JSON nested deeper than " + std::to_string(max_json_depth) + " levels");
        } else if (c == '}' || c == ']') {
            --depth;
        }
    }
}

// Parses JSON text and fails on syntax errors and on a key repeated inside any object
// (nlohmann would silently keep only one). `top_label` names what a top-level key is.
json parse_json_strict(const std::string& where, const char* p, size_t n, const std::string& top_label) {
    check_nesting(where, p, n);
    struct frame {
        bool is_object = false;
        std::set<std::string> keys;
        std::string last_key;
    };
    std::vector<frame> stack;
    std::string duplicate;
    auto cb = [&](int, json::parse_event_t ev, json& parsed) -> bool {
        switch (ev) {
        case json::parse_event_t::object_start:
        case json::parse_event_t::array_start:
            if (stack.size() >= size_t(json_max_depth))
                fail(where, "invalid JSON: nesting deeper than " + std::to_string(json_max_depth) + " levels");
            stack.push_back({ev == json::parse_event_t::object_start, {}, {}});
            break;
        case json::parse_event_t::object_end:
        case json::parse_event_t::array_end:
            if (!stack.empty()) stack.pop_back();
            break;
        case json::parse_event_t::key:
            if (!stack.empty() && parsed.is_string()) {
                frame& top = stack.back();
                const std::string& k = parsed.get_ref<const std::string&>();
                if (!top.keys.insert(k).second && duplicate.empty()) {
                    if (stack.size() == 1) duplicate = "duplicate " + top_label + " " + show(k);
                    else duplicate = "duplicate key " + show(k) + " in " + show(stack[stack.size() - 2].last_key);
                }
                top.last_key = k;
            }
            break;
        default: break;
        }
        return true;
    };
    json j;
    try {
        j = json::parse(p, p + n, cb);
    } catch (const json::exception& e) {
        fail(where, "invalid JSON: " + one_line(e.what()));
    }
    if (!duplicate.empty()) fail(where, duplicate + " in JSON");
    return j;
}

bool get_u64(const json& v, uint64_t& out) {
    if (v.is_number_unsigned()) { out = v.get<uint64_t>(); return true; }
    if (v.is_number_integer()) {
        const int64_t x = v.get<int64_t>();
        if (x < 0) return false;
        out = uint64_t(x);
        return true;
    }
    return false;
}

// Element count of `shape`; false on overflow.
bool element_count(const std::vector<int64_t>& shape, uint64_t& count) {
    count = 1;
    for (int64_t d : shape)
        if (d < 0 || __builtin_mul_overflow(count, uint64_t(d), &count)) return false;
    return true;
}

st_tensor_info parse_entry(const std::string& path, const std::string& name, const json& e) {
    const std::string where = tensor_where(name);
    if (name.empty()) fail(path, "empty tensor name in header");
    if (!e.is_object()) fail(path, where + ": entry is not a JSON object");
    for (auto it = e.begin(); it != e.end(); ++it)
        if (it.key() != "dtype" && it.key() != "shape" && it.key() != "data_offsets")
            fail(path, where + ": unknown field " + show(it.key()));
    st_tensor_info t;
    t.name = name;

    auto d = e.find("dtype");
    if (d == e.end()) fail(path, where + ": missing 'dtype'");
    if (!d->is_string()) fail(path, where + ": 'dtype' is not a string");
    if (!dtype_from_name(d->get<std::string>(), t.type))
        fail(path, where + ": unknown dtype " + show(d->get<std::string>()));

    auto s = e.find("shape");
    if (s == e.end()) fail(path, where + ": missing 'shape'");
    if (!s->is_array()) fail(path, where + ": 'shape' is not an array");
    for (size_t i = 0; i < s->size(); ++i) {
        uint64_t v;
        if (!get_u64((*s)[i], v) || v > uint64_t(std::numeric_limits<int64_t>::max()))
            fail(path, where + ": shape[" + std::to_string(i) + "] = " + brief((*s)[i]) +
                           " is not a non-negative integer");
        t.shape.push_back(int64_t(v));
    }

    auto o = e.find("data_offsets");
    if (o == e.end()) fail(path, where + ": missing 'data_offsets'");
    if (!o->is_array() || o->size() != 2 || !get_u64((*o)[0], t.begin) || !get_u64((*o)[1], t.end))
        fail(path, where + ": 'data_offsets' = " + brief(*o) + " is not two non-negative integers");
    if (t.begin > t.end) fail(path, where + ": data_offsets " + range_str(t.begin, t.end) + " has begin > end");

    uint64_t count, bytes;
    if (!element_count(t.shape, count) || __builtin_mul_overflow(count, uint64_t(dtype_size(t.type)), &bytes))
        fail(path, where + ": shape " + shape_str(t.shape) + " is too large");
    if (bytes != t.end - t.begin)
        fail(path, where + ": shape " + shape_str(t.shape) + " of " + dtype_name(t.type) + " needs " +
                       std::to_string(bytes) + " bytes but data_offsets " + range_str(t.begin, t.end) +
                       " span " + std::to_string(t.end - t.begin));
    return t;
}

// Checks the byte ranges tile the data section [0, data_size) exactly.
void check_layout(const std::string& path, const std::map<std::string, st_tensor_info>& tensors,
                  uint64_t data_size) {
    std::vector<const st_tensor_info*> order;
    for (const auto& [name, t] : tensors) {
        if (t.end > data_size)
            fail(path, tensor_where(name) + ": data_offsets " + range_str(t.begin, t.end) +
                           " run past the end of the data section (" + std::to_string(data_size) + " bytes)");
        order.push_back(&t);
    }
    std::sort(order.begin(), order.end(), [](const st_tensor_info* a, const st_tensor_info* b) {
        if (a->begin != b->begin) return a->begin < b->begin;
        if (a->end != b->end) return a->end < b->end;
        return a->name < b->name;
    });
    uint64_t pos = 0;
    const st_tensor_info* prev = nullptr;
    for (const st_tensor_info* t : order) {
        const std::string where = tensor_where(t->name) + ": data_offsets " + range_str(t->begin, t->end);
        if (t->begin < pos)
            fail(path, where + " overlap tensor " + show(prev->name) + " " + range_str(prev->begin, prev->end));
        if (t->begin > pos) {
            if (!prev) fail(path, where + " leave a gap at the start of the data section");
            fail(path, where + " leave a gap after tensor " + show(prev->name) + " " +
                           range_str(prev->begin, prev->end));
        }
        pos = t->end;
        prev = t;
    }
    if (pos != data_size) {
        if (!prev) fail(path, "data section has " + std::to_string(data_size) + " bytes but there are no tensors");
        fail(path, "data section has " + std::to_string(data_size) + " bytes but the last tensor " +
                       show(prev->name) + " ends at " + std::to_string(pos) + " (ranges must end at end of file)");
    }
}

std::string path_join(const fs::path& dir, const std::string& name) { return (dir / name).string(); }

// Rejects shard names that could escape the checkpoint folder.
void check_shard_name(const std::string& index_path, const std::string& tensor, const std::string& shard) {
    const fs::path p(shard);
    bool bad = shard.empty() || p.is_absolute();
    for (const auto& part : p) bad = bad || part == "..";
    if (bad) fail(index_path, "weight_map " + show(tensor) + ": bad shard file name " + show(shard));
}

void open_index(checkpoint& ck, const std::string& index_path) {
    uint64_t size = 0;
    std::string text;
    {
        file_closer fc{open_regular(index_path, size)};
        if (size > max_index_bytes) fail(index_path, "index file is larger than 100 MB");
        text.resize(size);
        read_exact(fc.f, reinterpret_cast<uint8_t*>(text.data()), size, index_path);
    }
    const json j = parse_json_strict(index_path, text.data(), text.size(), "key");
    if (!j.is_object()) fail(index_path, "index is not a JSON object");
    auto wm = j.find("weight_map");
    if (wm == j.end()) fail(index_path, "missing 'weight_map'");
    if (!wm->is_object()) fail(index_path, "'weight_map' is not an object");

    std::map<std::string, std::string> tensor_shard;            // name -> shard file name
    std::map<std::string, size_t> shard_index;                  // shard file name -> files[] position
    for (auto it = wm->begin(); it != wm->end(); ++it) {
        if (!it.value().is_string()) fail(index_path, "weight_map " + show(it.key()) + ": value is not a string");
        const std::string shard = it.value().get<std::string>();
        check_shard_name(index_path, it.key(), shard);
        tensor_shard[it.key()] = shard;
        if (!shard_index.count(shard)) {
            const std::string full = path_join(ck.dir, shard);
            std::error_code ec;
            if (!fs::is_regular_file(full, ec))
                fail(index_path, "weight_map puts tensor " + show(it.key()) + " in shard " + show(shard) +
                                     ", but " + show(full) + " does not exist");
            shard_index[shard] = 0;
        }
    }
    for (auto& [shard, idx] : shard_index) {
        idx = ck.files.size();
        ck.files.push_back(std::make_unique<st_file>(st_read(path_join(ck.dir, shard))));
    }

    std::map<std::string, std::string> owner;                   // name -> shard that holds it
    for (const auto& [shard, idx] : shard_index)
        for (const auto& [name, t] : ck.files[idx]->tensors) {
            auto [it, fresh] = owner.emplace(name, shard);
            if (!fresh)
                fail(index_path, tensor_where(name) + " appears in both shard " + show(it->second) +
                                     " and shard " + show(shard));
        }
    for (const auto& [name, shard] : tensor_shard) {
        const size_t idx = shard_index.at(shard);
        auto t = ck.files[idx]->tensors.find(name);
        if (t == ck.files[idx]->tensors.end())
            fail(index_path, "weight_map puts tensor " + show(name) + " in shard " + show(shard) +
                                 ", but that shard does not contain it");
        ck.index[name] = {idx, t->second};
    }
    for (const auto& [name, shard] : owner)
        if (!tensor_shard.count(name))
            fail(index_path, "shard " + show(shard) + " holds tensor " + show(name) + " that weight_map does not list");
}

void open_single(checkpoint& ck, const std::string& path) {
    ck.files.push_back(std::make_unique<st_file>(st_read(path)));
    for (const auto& [name, t] : ck.files[0]->tensors) ck.index[name] = {0, t};
}

// Removes the temp file unless the write completed.
struct temp_guard {
    std::string path;
    std::FILE* f = nullptr;
    bool done = false;
    ~temp_guard() {
        if (f) std::fclose(f);
        if (!done) std::remove(path.c_str());
    }
};

void write_all(temp_guard& g, const std::string& path, const void* p, size_t n) {
    if (n && std::fwrite(p, 1, n, g.f) != n)
        fail(path, "cannot write " + show(g.path) + ": " + std::strerror(errno));
}

} // namespace

st_file st_read(const std::string& path) {
    st_file out;
    out.path = path;
    uint64_t size = 0;
    file_closer fc{open_regular(path, size)};
    if (size < 8)
        fail(path, "file is " + std::to_string(size) + " bytes, too short for the 8-byte header length");
    uint8_t len_bytes[8];
    read_exact(fc.f, len_bytes, 8, path);
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | len_bytes[i];
    if (n > max_header_bytes) fail(path, "header length " + std::to_string(n) + " exceeds the 100 MB limit");
    if (n > size - 8)
        fail(path, "header length " + std::to_string(n) + " runs past end of file (" + std::to_string(size) +
                       " bytes)");
    try {
        out.bytes.resize(size);
    } catch (const std::bad_alloc&) {
        fail(path, "cannot allocate " + std::to_string(size) + " bytes to read the file");
    }
    std::memcpy(out.bytes.data(), len_bytes, 8);
    read_exact(fc.f, out.bytes.data() + 8, n, path);
    out.data_start = 8 + n;

    const json h = parse_json_strict(path, reinterpret_cast<const char*>(out.bytes.data() + 8), size_t(n),
                                     "tensor name");
    if (!h.is_object()) fail(path, "header is not a JSON object");
    for (auto it = h.begin(); it != h.end(); ++it) {
        if (it.key() == "__metadata__") {
            if (!it.value().is_object()) fail(path, "'__metadata__' is not an object");
            for (auto m = it.value().begin(); m != it.value().end(); ++m) {
                if (!m.value().is_string()) fail(path, "__metadata__ " + show(m.key()) + ": value is not a string");
                out.metadata[m.key()] = m.value().get<std::string>();
            }
            continue;
        }
        out.tensors[it.key()] = parse_entry(path, it.key(), it.value());
    }
    check_layout(path, out.tensors, size - out.data_start);
    read_exact(fc.f, out.bytes.data() + out.data_start, size - out.data_start, path);
    return out;
}

bool checkpoint::has(const std::string& name) const { return index.count(name) != 0; }

const st_tensor_info& checkpoint::info(const std::string& name) const {
    auto it = index.find(name);
    if (it == index.end()) fail(source.empty() ? dir : source, "no tensor " + show(name) + " in checkpoint");
    return it->second.second;
}

void checkpoint::read_f32(const std::string& name, std::vector<float>& out,
                          const std::vector<int64_t>& expect_shape) const {
    const st_tensor_info& t = info(name);
    const st_file& f = *files[index.at(name).first];
    if (!expect_shape.empty() && expect_shape != t.shape)
        fail(f.path, tensor_where(name) + ": expected shape " + shape_str(expect_shape) + ", found " +
                         shape_str(t.shape));
    uint64_t count = 0;
    element_count(t.shape, count);                    // validated when the file was read
    out.resize(size_t(count));
    const uint8_t* src = f.bytes.data() + f.data_start + t.begin;
    convert_to_f32(t.type, src, out.data(), out.size());
    if (t.type != dtype::f8_e4m3) return;

    // FP8: W[i,j] = q[i,j] * s[i/128, j/128].
    const std::string scale_name = name + "_scale_inv";
    if (t.shape.size() != 2)
        fail(f.path, tensor_where(name) + ": F8_E4M3 tensor must be 2-D to dequantise, found shape " +
                         shape_str(t.shape));
    if (!has(scale_name))
        fail(f.path, tensor_where(name) + ": F8_E4M3 tensor has no scale tensor " + show(scale_name));
    if (info(scale_name).type == dtype::f8_e4m3)
        fail(files[index.at(scale_name).first]->path, tensor_where(scale_name) + ": scale tensor cannot be F8_E4M3");
    const int64_t rows = t.shape[0], cols = t.shape[1];
    const int64_t srows = (rows + fp8_block - 1) / fp8_block, scols = (cols + fp8_block - 1) / fp8_block;
    std::vector<float> scale;
    read_f32(scale_name, scale, {srows, scols});
    float* w = out.data();
    const float* s = scale.data();
#pragma omp parallel for schedule(static) if (count >= (uint64_t(1) << 16))
    for (int64_t i = 0; i < rows; ++i) {
        const float* srow = s + (i / fp8_block) * scols;
        float* wrow = w + i * cols;
        for (int64_t j = 0; j < cols; ++j) wrow[j] *= srow[j / fp8_block];
    }
}

std::vector<std::string> checkpoint::names() const {
    std::vector<std::string> out;
    out.reserve(index.size());
    for (const auto& [name, entry] : index) out.push_back(name);
    return out;
}

checkpoint checkpoint_open(const std::string& path) {
    checkpoint ck;
    std::error_code ec;
    const fs::path p(path);
    if (fs::is_directory(p, ec)) {
        ck.dir = path;
        const std::string idx = path_join(p, "model.safetensors.index.json");
        const std::string single = path_join(p, "model.safetensors");
        if (fs::exists(idx, ec)) {
            ck.source = idx;
            open_index(ck, idx);
        } else if (fs::exists(single, ec)) {
            ck.source = single;
            open_single(ck, single);
        } else {
            fail(path, "directory has neither model.safetensors.index.json nor model.safetensors");
        }
        return ck;
    }
    if (!fs::exists(p, ec)) fail(path, "no such file or directory");
    ck.dir = p.has_parent_path() ? p.parent_path().string() : ".";
    ck.source = path;
    const std::string file = p.filename().string();
    const std::string suffix = ".index.json";
    if (file.size() >= suffix.size() && file.compare(file.size() - suffix.size(), suffix.size(), suffix) == 0)
        open_index(ck, path);
    else
        open_single(ck, path);
    return ck;
}

void st_write(const std::string& path, const std::vector<st_write_item>& items,
              const std::map<std::string, std::string>& metadata) {
    nlohmann::ordered_json header = nlohmann::ordered_json::object();
    nlohmann::ordered_json meta = nlohmann::ordered_json::object();
    for (const auto& [k, v] : metadata) meta[k] = v;
    if (!meta.contains("format")) meta["format"] = "pt";
    header["__metadata__"] = meta;

    std::set<std::string> seen;
    std::vector<uint64_t> counts;
    uint64_t offset = 0;
    for (const st_write_item& it : items) {
        const std::string where = tensor_where(it.name);
        if (it.name.empty() || it.name == "__metadata__") fail(path, where + ": reserved or empty tensor name");
        if (!seen.insert(it.name).second) fail(path, where + ": given twice");
        if (it.type == dtype::f8_e4m3) fail(path, where + ": cannot write dtype F8_E4M3");
        uint64_t count, bytes, end;
        if (!element_count(it.shape, count) ||
            __builtin_mul_overflow(count, uint64_t(dtype_size(it.type)), &bytes) ||
            __builtin_add_overflow(offset, bytes, &end))
            fail(path, where + ": bad shape " + shape_str(it.shape));
        if (count > 0 && !it.data) fail(path, where + ": no data");
        header[it.name] = {{"dtype", dtype_name(it.type)},
                           {"shape", it.shape},
                           {"data_offsets", {offset, end}}};
        counts.push_back(count);
        offset = end;
    }
    std::string text;
    try {
        text = header.dump();
    } catch (const nlohmann::json::exception&) {
        fail(path, "a tensor name or metadata string is not valid UTF-8");
    }
    text.append((8 - text.size() % 8) % 8, ' ');

    temp_guard g;
    g.path = path + ".tmp." + std::to_string(getpid());
    g.f = std::fopen(g.path.c_str(), "wb");
    if (!g.f) fail(path, "cannot create " + show(g.path) + ": " + std::strerror(errno));
    uint8_t len_bytes[8];
    for (int i = 0; i < 8; ++i) len_bytes[i] = uint8_t(uint64_t(text.size()) >> (8 * i));
    write_all(g, path, len_bytes, 8);
    write_all(g, path, text.data(), text.size());

    constexpr size_t chunk = size_t(1) << 20;
    std::vector<uint8_t> buf;
    for (size_t k = 0; k < items.size(); ++k) {
        const st_write_item& it = items[k];
        const size_t esize = dtype_size(it.type);
        if (it.type == dtype::f32) {
            write_all(g, path, it.data, size_t(counts[k]) * esize);
            continue;
        }
        for (uint64_t done = 0; done < counts[k]; done += chunk) {
            const size_t n = size_t(std::min<uint64_t>(chunk, counts[k] - done));
            buf.resize(n * esize);
            convert_from_f32(it.type, it.data + done, buf.data(), n);
            write_all(g, path, buf.data(), buf.size());
        }
    }
    if (std::fflush(g.f) != 0 || fsync(fileno(g.f)) != 0)
        fail(path, "cannot flush " + show(g.path) + ": " + std::strerror(errno));
    const int rc = std::fclose(g.f);
    g.f = nullptr;
    if (rc != 0) fail(path, "cannot close " + show(g.path) + ": " + std::strerror(errno));
    if (std::rename(g.path.c_str(), path.c_str()) != 0)
        fail(path, "cannot rename " + show(g.path) + " into place: " + std::strerror(errno));
    g.done = true;
}

} // namespace mtp
