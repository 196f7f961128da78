// GGUF v3 reader (strict) and writer. See gguf.h for the layout.
#include "io/gguf.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>

#include "core/dtype.h"
#include "core/error.h"
#include "io/atomic_file.h"

namespace mtp {

const char* gguf_vtype_name(gguf_vtype t) {
    switch (t) {
    case gguf_vtype::u8: return "UINT8";
    case gguf_vtype::i8: return "INT8";
    case gguf_vtype::u16: return "UINT16";
    case gguf_vtype::i16: return "INT16";
    case gguf_vtype::u32: return "UINT32";
    case gguf_vtype::i32: return "INT32";
    case gguf_vtype::f32: return "FLOAT32";
    case gguf_vtype::boolean: return "BOOL";
    case gguf_vtype::string: return "STRING";
    case gguf_vtype::array: return "ARRAY";
    case gguf_vtype::u64: return "UINT64";
    case gguf_vtype::i64: return "INT64";
    case gguf_vtype::f64: return "FLOAT64";
    }
    return "?";
}

const char* ggml_type_name(ggml_type t) {
    switch (t) {
    case ggml_type::f32: return "F32";
    case ggml_type::f16: return "F16";
    case ggml_type::q8_0: return "Q8_0";
    }
    return "?";
}

uint64_t ggml_row_bytes(ggml_type t, int64_t ne0) {
    switch (t) {
    case ggml_type::f32: return uint64_t(ne0) * 4;
    case ggml_type::f16: return uint64_t(ne0) * 2;
    case ggml_type::q8_0: return uint64_t(ne0 / 32) * 34;
    }
    return 0;
}

bool gguf_kv::is_int() const {
    switch (type) {
    case gguf_vtype::u8: case gguf_vtype::i8: case gguf_vtype::u16: case gguf_vtype::i16:
    case gguf_vtype::u32: case gguf_vtype::i32: case gguf_vtype::u64: case gguf_vtype::i64: return true;
    default: return false;
    }
}

int64_t gguf_tensor::n_elements() const {
    int64_t n = 1;
    for (auto d : ne) n *= d;
    return n;
}

// ---------------------------------------------------------------- reader

namespace {

struct cursor {
    const std::string& path;
    const uint8_t* p;
    uint64_t n, pos = 0;

    [[noreturn]] void bad(const std::string& field, const std::string& what) const { fail(path, field + ": " + what); }
    void need(uint64_t k, const std::string& field) const {
        if (k > n - pos) bad(field, "truncated (needs " + std::to_string(k) + " bytes at offset " + std::to_string(pos) +
                                        ", file has " + std::to_string(n) + ")");
    }
    template <class T> T get(const std::string& field) {
        need(sizeof(T), field);
        T v;
        std::memcpy(&v, p + pos, sizeof(T));   // host is little-endian (x86-64)
        pos += sizeof(T);
        return v;
    }
    std::string str(const std::string& field) {
        uint64_t len = get<uint64_t>(field + " (string length)");
        need(len, field + " (string of length " + std::to_string(len) + ")");
        std::string s(reinterpret_cast<const char*>(p + pos), size_t(len));
        pos += len;
        return s;
    }
};

uint64_t scalar_size(gguf_vtype t) {
    switch (t) {
    case gguf_vtype::u8: case gguf_vtype::i8: case gguf_vtype::boolean: return 1;
    case gguf_vtype::u16: case gguf_vtype::i16: return 2;
    case gguf_vtype::u32: case gguf_vtype::i32: case gguf_vtype::f32: return 4;
    case gguf_vtype::u64: case gguf_vtype::i64: case gguf_vtype::f64: return 8;
    default: return 0;
    }
}

bool read_scalar(cursor& c, gguf_vtype t, const std::string& field, int64_t& i, double& f) {
    switch (t) {
    case gguf_vtype::u8: i = c.get<uint8_t>(field); return true;
    case gguf_vtype::i8: i = c.get<int8_t>(field); return true;
    case gguf_vtype::u16: i = c.get<uint16_t>(field); return true;
    case gguf_vtype::i16: i = c.get<int16_t>(field); return true;
    case gguf_vtype::u32: i = c.get<uint32_t>(field); return true;
    case gguf_vtype::i32: i = c.get<int32_t>(field); return true;
    case gguf_vtype::u64: i = int64_t(c.get<uint64_t>(field)); return true;
    case gguf_vtype::i64: i = c.get<int64_t>(field); return true;
    case gguf_vtype::boolean: {
        uint8_t b = c.get<uint8_t>(field);
        if (b > 1) c.bad(field, "bool value " + std::to_string(b) + " is not 0 or 1");
        i = b;
        return true;
    }
    case gguf_vtype::f32: f = c.get<float>(field); return false;
    case gguf_vtype::f64: f = c.get<double>(field); return false;
    default: c.bad(field, "bad scalar type");
    }
}

bool valid_vtype(uint32_t t) { return t <= 12; }

} // namespace

gguf_file gguf_read(const std::string& path) {
    gguf_file g;
    g.path = path;
    {
        std::ifstream f(path, std::ios::binary | std::ios::ate);
        if (!f) fail(path, "cannot open GGUF file");
        std::streamoff sz = f.tellg();
        if (sz < 0) fail(path, "cannot read GGUF file");
        g.bytes.resize(size_t(sz));
        f.seekg(0);
        if (sz > 0 && !f.read(reinterpret_cast<char*>(g.bytes.data()), sz)) fail(path, "read error");
    }
    cursor c{path, g.bytes.data(), g.bytes.size()};
    if (g.bytes.size() < 24) c.bad("header", "file too short for a GGUF header (" + std::to_string(g.bytes.size()) + " bytes)");
    if (std::memcmp(g.bytes.data(), "GGUF", 4) != 0) c.bad("magic", "not a GGUF file (magic is not \"GGUF\")");
    c.pos = 4;
    uint32_t version = c.get<uint32_t>("version");
    if (version == 0x03000000u || version == 0x02000000u) c.bad("version", "big-endian GGUF files are not supported");
    if (version != 3) c.bad("version", "unsupported GGUF version " + std::to_string(version) + " (expected 3)");
    int64_t n_tensors = c.get<int64_t>("tensor_count");
    int64_t n_kv = c.get<int64_t>("kv_count");
    // Each kv takes at least 8 (key length) + 1 (key) + 4 (type) + 1 bytes; each tensor info at least 8+1+4+8+4+8.
    if (n_kv < 0 || uint64_t(n_kv) > (c.n - c.pos) / 14)
        c.bad("kv_count", std::to_string(n_kv) + " is negative or larger than the file can hold");
    if (n_tensors < 0 || uint64_t(n_tensors) > (c.n - c.pos) / 33)
        c.bad("tensor_count", std::to_string(n_tensors) + " is negative or larger than the file can hold");

    for (int64_t k = 0; k < n_kv; ++k) {
        const std::string where = "kv " + std::to_string(k);
        gguf_kv kv;
        kv.key = c.str(where + " key");
        if (kv.key.empty()) c.bad(where, "empty key");
        const std::string field = "key '" + kv.key + "'";
        if (g.kv_index.count(kv.key)) c.bad(field, "duplicate key");
        uint32_t t = c.get<uint32_t>(field + " type");
        if (!valid_vtype(t)) c.bad(field, "unknown value type " + std::to_string(t));
        kv.type = gguf_vtype(t);
        if (kv.type == gguf_vtype::string) {
            kv.s = c.str(field);
        } else if (kv.type == gguf_vtype::array) {
            uint32_t at = c.get<uint32_t>(field + " array type");
            if (!valid_vtype(at)) c.bad(field, "unknown array element type " + std::to_string(at));
            kv.arr_type = gguf_vtype(at);
            if (kv.arr_type == gguf_vtype::array) c.bad(field, "nested arrays are not supported");
            uint64_t cnt = c.get<uint64_t>(field + " array length");
            uint64_t min_el = kv.arr_type == gguf_vtype::string ? 8 : scalar_size(kv.arr_type);
            if (cnt > (c.n - c.pos) / min_el) c.bad(field, "array length " + std::to_string(cnt) + " runs past end of file");
            for (uint64_t e = 0; e < cnt; ++e) {
                if (kv.arr_type == gguf_vtype::string) {
                    kv.as.push_back(c.str(field + "[" + std::to_string(e) + "]"));
                } else {
                    int64_t iv = 0;
                    double fv = 0;
                    if (read_scalar(c, kv.arr_type, field, iv, fv)) kv.ai.push_back(iv);
                    else kv.af.push_back(fv);
                }
            }
        } else {
            read_scalar(c, kv.type, field, kv.i, kv.f);
        }
        g.kv_index[kv.key] = g.kvs.size();
        g.kvs.push_back(std::move(kv));
    }
    if (const gguf_kv* a = g.find("general.alignment")) {
        if (a->type != gguf_vtype::u32) c.bad("key 'general.alignment'", std::string("expected UINT32, got ") + gguf_vtype_name(a->type));
        if (a->i == 0 || (a->i & (a->i - 1)) != 0) c.bad("key 'general.alignment'", std::to_string(a->i) + " is not a power of two");
        g.alignment = uint32_t(a->i);
    }

    for (int64_t k = 0; k < n_tensors; ++k) {
        gguf_tensor t;
        t.name = c.str("tensor " + std::to_string(k) + " name");
        const std::string field = "tensor '" + t.name + "'";
        if (t.name.empty() || t.name.size() > 63) c.bad("tensor " + std::to_string(k), "name length " + std::to_string(t.name.size()) + " not in 1..63");
        if (g.tensor_index.count(t.name)) c.bad(field, "duplicate tensor name");
        uint32_t nd = c.get<uint32_t>(field + " n_dims");
        if (nd < 1 || nd > 4) c.bad(field, "n_dims " + std::to_string(nd) + " not in 1..4");
        int64_t n = 1;
        for (uint32_t d = 0; d < nd; ++d) {
            int64_t v = c.get<int64_t>(field + " ne");
            if (v < 0) c.bad(field, "negative dimension " + std::to_string(v));
            if (v > 0 && n > std::numeric_limits<int64_t>::max() / 8 / v) c.bad(field, "element count overflows");
            n *= v;
            t.ne.push_back(v);
        }
        uint32_t ty = c.get<uint32_t>(field + " type");
        if (ty != 0 && ty != 1 && ty != 8) c.bad(field, "unsupported ggml type " + std::to_string(ty) + " (supported: F32=0, F16=1, Q8_0=8)");
        t.type = ggml_type(ty);
        if (t.type == ggml_type::q8_0 && t.ne[0] % 32 != 0) c.bad(field, "Q8_0 row length " + std::to_string(t.ne[0]) + " is not a multiple of 32");
        t.offset = c.get<uint64_t>(field + " offset");
        if (t.offset % g.alignment != 0) c.bad(field, "offset " + std::to_string(t.offset) + " is not a multiple of the alignment " + std::to_string(g.alignment));
        t.bytes = t.ne[0] == 0 ? 0 : ggml_row_bytes(t.type, t.ne[0]) * uint64_t(n / t.ne[0]);
        g.tensor_index[t.name] = g.tensors.size();
        g.tensors.push_back(std::move(t));
    }
    g.data_start = (c.pos + g.alignment - 1) / g.alignment * g.alignment;
    if (g.data_start > c.n) c.bad("data section", "starts at " + std::to_string(g.data_start) + ", past end of file");
    const uint64_t data_size = c.n - g.data_start;
    std::vector<const gguf_tensor*> by_off;
    for (const auto& t : g.tensors) {
        if (t.offset > data_size || t.bytes > data_size - t.offset)
            c.bad("tensor '" + t.name + "'", "data [" + std::to_string(t.offset) + ", +" + std::to_string(t.bytes) +
                                                 ") runs past the end of the data section (" + std::to_string(data_size) + " bytes)");
        by_off.push_back(&t);
    }
    std::sort(by_off.begin(), by_off.end(), [](auto a, auto b) { return a->offset < b->offset; });
    for (size_t k = 1; k < by_off.size(); ++k)
        if (by_off[k - 1]->offset + by_off[k - 1]->bytes > by_off[k]->offset)
            c.bad("tensor '" + by_off[k]->name + "'", "data overlaps tensor '" + by_off[k - 1]->name + "'");
    return g;
}

const gguf_kv* gguf_file::find(const std::string& key) const {
    auto it = kv_index.find(key);
    return it == kv_index.end() ? nullptr : &kvs[it->second];
}

const gguf_tensor* gguf_file::tensor(const std::string& name) const {
    auto it = tensor_index.find(name);
    return it == tensor_index.end() ? nullptr : &tensors[it->second];
}

int64_t gguf_file::get_int(const std::string& key) const {
    const gguf_kv* kv = find(key);
    if (!kv) fail(path, "key '" + key + "': missing");
    if (!kv->is_int()) fail(path, "key '" + key + "': expected an integer, got " + gguf_vtype_name(kv->type));
    return kv->i;
}
int64_t gguf_file::get_int(const std::string& key, int64_t dflt) const { return find(key) ? get_int(key) : dflt; }

double gguf_file::get_float(const std::string& key) const {
    const gguf_kv* kv = find(key);
    if (!kv) fail(path, "key '" + key + "': missing");
    if (kv->type == gguf_vtype::f32 || kv->type == gguf_vtype::f64) return kv->f;
    if (kv->is_int()) return double(kv->i);
    fail(path, "key '" + key + "': expected a number, got " + gguf_vtype_name(kv->type));
}
double gguf_file::get_float(const std::string& key, double dflt) const { return find(key) ? get_float(key) : dflt; }

bool gguf_file::get_bool(const std::string& key, bool dflt) const {
    const gguf_kv* kv = find(key);
    if (!kv) return dflt;
    if (kv->type != gguf_vtype::boolean) fail(path, "key '" + key + "': expected BOOL, got " + gguf_vtype_name(kv->type));
    return kv->i != 0;
}

std::string gguf_file::get_string(const std::string& key) const {
    const gguf_kv* kv = find(key);
    if (!kv) fail(path, "key '" + key + "': missing");
    if (kv->type != gguf_vtype::string) fail(path, "key '" + key + "': expected STRING, got " + gguf_vtype_name(kv->type));
    return kv->s;
}

void gguf_file::read_f32(const gguf_tensor& t, std::vector<float>& out) const {
    const int64_t n = t.n_elements();
    out.resize(size_t(n));
    const uint8_t* src = bytes.data() + data_start + t.offset;
    switch (t.type) {
    case ggml_type::f32: std::memcpy(out.data(), src, size_t(n) * 4); break;
    case ggml_type::f16: convert_to_f32(dtype::f16, src, out.data(), size_t(n)); break;
    case ggml_type::q8_0: q8_0_dequantize_row(src, n, out.data()); break;   // blocks never straddle rows
    }
}

// ---------------------------------------------------------------- writer

namespace {
template <class T> void put(std::string& s, T v) { s.append(reinterpret_cast<const char*>(&v), sizeof(T)); }
void put_str(std::string& s, const std::string& v) {
    put<uint64_t>(s, v.size());
    s += v;
}
} // namespace

void gguf_writer::key(const std::string& k, gguf_vtype t) {
    put_str(kv_bytes_, k);
    put<uint32_t>(kv_bytes_, uint32_t(t));
    ++n_kv_;
}
void gguf_writer::add_u32(const std::string& k, uint32_t v) { key(k, gguf_vtype::u32); put(kv_bytes_, v); }
void gguf_writer::add_i32(const std::string& k, int32_t v) { key(k, gguf_vtype::i32); put(kv_bytes_, v); }
void gguf_writer::add_f32(const std::string& k, float v) { key(k, gguf_vtype::f32); put(kv_bytes_, v); }
void gguf_writer::add_bool(const std::string& k, bool v) { key(k, gguf_vtype::boolean); put<uint8_t>(kv_bytes_, v ? 1 : 0); }
void gguf_writer::add_string(const std::string& k, const std::string& v) { key(k, gguf_vtype::string); put_str(kv_bytes_, v); }
void gguf_writer::add_string_array(const std::string& k, const std::vector<std::string>& v) {
    key(k, gguf_vtype::array);
    put<uint32_t>(kv_bytes_, uint32_t(gguf_vtype::string));
    put<uint64_t>(kv_bytes_, v.size());
    for (const auto& s : v) put_str(kv_bytes_, s);
}
void gguf_writer::add_i32_array(const std::string& k, const std::vector<int32_t>& v) {
    key(k, gguf_vtype::array);
    put<uint32_t>(kv_bytes_, uint32_t(gguf_vtype::i32));
    put<uint64_t>(kv_bytes_, v.size());
    for (auto x : v) put(kv_bytes_, x);
}

void gguf_writer::add_tensor(const std::string& name, const std::vector<int64_t>& ne, ggml_type type, const float* data) {
    if (name.empty() || name.size() > 63) fail(name, "GGUF tensor names must be 1..63 bytes");
    if (type == ggml_type::q8_0 && ne[0] % 32 != 0) fail(name, "Q8_0 needs rows that are a multiple of 32");
    int64_t n = 1;
    for (auto d : ne) n *= d;
    pending p{name, ne, type, {}};
    p.data.resize(ne[0] == 0 ? 0 : size_t(ggml_row_bytes(type, ne[0]) * uint64_t(n / ne[0])));
    switch (type) {
    case ggml_type::f32: std::memcpy(p.data.data(), data, size_t(n) * 4); break;
    case ggml_type::f16: convert_from_f32(dtype::f16, data, p.data.data(), size_t(n)); break;
    case ggml_type::q8_0: q8_0_quantize_row(data, n, reinterpret_cast<uint8_t*>(p.data.data())); break;
    }
    tensors_.push_back(std::move(p));
}

void gguf_writer::write(const std::string& path, uint32_t alignment) const {
    auto pad = [&](std::string& s) { s.resize((s.size() + alignment - 1) / alignment * alignment, '\0'); };
    std::string out = "GGUF";
    put<uint32_t>(out, 3);
    put<int64_t>(out, int64_t(tensors_.size()));
    put<int64_t>(out, int64_t(n_kv_ + (alignment != 32 ? 1 : 0)));
    out += kv_bytes_;
    if (alignment != 32) {
        put_str(out, "general.alignment");
        put<uint32_t>(out, uint32_t(gguf_vtype::u32));
        put<uint32_t>(out, alignment);
    }
    uint64_t off = 0;
    for (const auto& t : tensors_) {
        put_str(out, t.name);
        put<uint32_t>(out, uint32_t(t.ne.size()));
        for (auto d : t.ne) put<int64_t>(out, d);
        put<uint32_t>(out, uint32_t(t.type));
        put<uint64_t>(out, off);
        off += (t.data.size() + alignment - 1) / alignment * alignment;
    }
    pad(out);
    for (const auto& t : tensors_) {
        out += t.data;
        pad(out);
    }
    write_file_atomic(path, out);
}

} // namespace mtp
