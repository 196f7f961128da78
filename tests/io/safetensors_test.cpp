// Tests for the safetensors reader/writer: round trips, FP8 dequantisation, shards and hostile files.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include <unistd.h>

#include "core/dtype.h"
#include "core/error.h"
#include "io/safetensors.h"

namespace fs = std::filesystem;

namespace {

// Writes an 8-byte little-endian header length, the header text and the data bytes.
void write_raw(const std::string& path, const std::string& header, const std::vector<uint8_t>& data,
               uint64_t claimed_len = UINT64_MAX) {
    const uint64_t n = claimed_len == UINT64_MAX ? header.size() : claimed_len;
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    for (int i = 0; i < 8; ++i) f.put(char(uint8_t(n >> (8 * i))));
    f.write(header.data(), std::streamsize(header.size()));
    f.write(reinterpret_cast<const char*>(data.data()), std::streamsize(data.size()));
}

void write_text(const std::string& path, const std::string& text) {
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    f << text;
}

std::vector<uint8_t> f32_bytes(const std::vector<float>& v) {
    std::vector<uint8_t> out(v.size() * 4);
    std::memcpy(out.data(), v.data(), out.size());
    return out;
}

// Runs f and returns the mtp::error message, or "<no error>".
std::string error_of(const std::function<void()>& f) {
    try {
        f();
    } catch (const mtp::error& e) {
        return e.what();
    }
    return "<no error>";
}

double ref_e4m3(uint8_t b) {
    const int s = b >> 7, e = (b >> 3) & 0xF, m = b & 7;
    const double v = e == 0 ? std::ldexp(double(m), -9) : std::ldexp(double(8 + m), e - 10);
    return s ? -v : v;
}

class SafetensorsTest : public ::testing::Test {
protected:
    void SetUp() override {
        dir = fs::temp_directory_path() / ("mtp_st_test_" + std::to_string(getpid()) + "_" +
                                           ::testing::UnitTest::GetInstance()->current_test_info()->name());
        fs::remove_all(dir);
        fs::create_directories(dir);
    }
    void TearDown() override { fs::remove_all(dir); }

    std::string file(const std::string& name) const { return (dir / name).string(); }

    // Expects reading `path` to fail with a one-line message that starts with the path and mentions `word`.
    void expect_read_error(const std::string& path, const std::string& word) {
        const std::string msg = error_of([&] { mtp::st_read(path); });
        EXPECT_EQ(msg.rfind(path, 0), 0u) << msg;
        EXPECT_NE(msg.find(word), std::string::npos) << msg;
        EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
        const std::string msg2 = error_of([&] { mtp::checkpoint_open(path); });
        EXPECT_EQ(msg2, msg);
    }

    bool temp_files_left() const {
        for (const auto& e : fs::directory_iterator(dir))
            if (e.path().filename().string().find(".tmp.") != std::string::npos) return true;
        return false;
    }

    fs::path dir;
};

} // namespace

TEST_F(SafetensorsTest, RoundTripF32F16Bf16) {
    const std::vector<float> a = {1.0f, -2.5f, 3.25f, 0.0f, -0.0f, 1e-3f};
    const std::vector<float> b = {0.1f, 65504.0f, -7.0f, 1e-6f};
    const std::vector<float> c = {3.14159f, -1e20f, 2.0f, 0.5f, -0.25f, 1e-30f};
    const float scalar = 42.0f;
    const std::string path = file("model.safetensors");
    mtp::st_write(path,
                  {{"a", {2, 3}, a.data(), mtp::dtype::f32},
                   {"b", {4}, b.data(), mtp::dtype::f16},
                   {"c.weight", {3, 1, 2}, c.data(), mtp::dtype::bf16},
                   {"scalar", {}, &scalar, mtp::dtype::f32},
                   {"empty", {0, 5}, nullptr, mtp::dtype::bf16}},
                  {{"step", "7"}});
    EXPECT_FALSE(temp_files_left());

    const mtp::st_file f = mtp::st_read(path);
    EXPECT_EQ(f.data_start % 8, 0u);
    EXPECT_EQ(f.metadata.at("step"), "7");
    EXPECT_EQ(f.metadata.at("format"), "pt");
    ASSERT_EQ(f.tensors.size(), 5u);
    EXPECT_EQ(f.tensors.at("b").type, mtp::dtype::f16);
    EXPECT_EQ(f.tensors.at("c.weight").shape, (std::vector<int64_t>{3, 1, 2}));
    // Tensors are laid out contiguously in the given order.
    EXPECT_EQ(f.tensors.at("a").begin, 0u);
    EXPECT_EQ(f.tensors.at("b").begin, 24u);
    EXPECT_EQ(f.tensors.at("c.weight").begin, 32u);

    for (const std::string& p : {path, dir.string()}) {
        const mtp::checkpoint ck = mtp::checkpoint_open(p);
        EXPECT_EQ(ck.names(), (std::vector<std::string>{"a", "b", "c.weight", "empty", "scalar"}));
        std::vector<float> out;
        ck.read_f32("a", out, {2, 3});
        EXPECT_EQ(out, a);
        ck.read_f32("b", out);
        ASSERT_EQ(out.size(), b.size());
        for (size_t i = 0; i < b.size(); ++i) EXPECT_EQ(out[i], mtp::f16_to_f32(mtp::f32_to_f16(b[i])));
        EXPECT_EQ(out[1], 65504.0f);
        ck.read_f32("c.weight", out);
        ASSERT_EQ(out.size(), c.size());
        for (size_t i = 0; i < c.size(); ++i) EXPECT_EQ(out[i], mtp::bf16_to_f32(mtp::f32_to_bf16(c[i])));
        EXPECT_EQ(out[2], 2.0f);
        ck.read_f32("scalar", out);
        EXPECT_EQ(out, std::vector<float>{42.0f});
        ck.read_f32("empty", out, {0, 5});
        EXPECT_TRUE(out.empty());
    }
}

TEST_F(SafetensorsTest, WriterReplacesAtomicallyAndCleansUp) {
    const std::string path = file("w.safetensors");
    const std::vector<float> v1 = {1, 2, 3}, v2 = {4, 5};
    mtp::st_write(path, {{"x", {3}, v1.data()}});
    mtp::st_write(path, {{"y", {2}, v2.data()}});
    const mtp::checkpoint ck = mtp::checkpoint_open(path);
    EXPECT_FALSE(ck.has("x"));
    std::vector<float> out;
    ck.read_f32("y", out);
    EXPECT_EQ(out, v2);
    EXPECT_FALSE(temp_files_left());

    // Failures leave neither a temp file nor a changed target.
    std::string msg = error_of([&] { mtp::st_write(path, {{"q", {1}, v1.data(), mtp::dtype::f8_e4m3}}); });
    EXPECT_EQ(msg.rfind(path, 0), 0u) << msg;
    msg = error_of([&] { mtp::st_write(path, {{"x", {1}, v1.data()}, {"x", {1}, v1.data()}}); });
    EXPECT_NE(msg.find("'x'"), std::string::npos) << msg;
    const std::string bad = file("no_such_dir/w.safetensors");
    msg = error_of([&] { mtp::st_write(bad, {{"x", {3}, v1.data()}}); });
    EXPECT_EQ(msg.rfind(bad, 0), 0u) << msg;
    EXPECT_FALSE(temp_files_left());
    EXPECT_TRUE(mtp::checkpoint_open(path).has("y"));

    // An empty file (no tensors) is valid.
    mtp::st_write(file("empty.safetensors"), {});
    EXPECT_TRUE(mtp::st_read(file("empty.safetensors")).tensors.empty());
}

TEST_F(SafetensorsTest, Fp8DequantisationWithPartialBlocks) {
    const int64_t rows = 130, cols = 260;   // 2 x 3 blocks of 128, the last row/col blocks partial
    std::vector<uint8_t> q(size_t(rows * cols));
    for (int64_t i = 0; i < rows; ++i)
        for (int64_t j = 0; j < cols; ++j) {
            uint8_t b = uint8_t(i * 7 + j * 3);
            if ((b & 0x7F) == 0x7F) b = 0x38;   // avoid the NaN codes
            q[size_t(i * cols + j)] = b;
        }
    const std::vector<float> scale = {0.5f, 2.0f, 0.25f, 4.0f, 1.5f, 8.0f};   // [2, 3]
    std::vector<uint8_t> data = q;
    const std::vector<uint8_t> sb = f32_bytes(scale);
    data.insert(data.end(), sb.begin(), sb.end());
    const std::string header =
        R"({"layer.weight":{"dtype":"F8_E4M3","shape":[130,260],"data_offsets":[0,33800]},)"
        R"("layer.weight_scale_inv":{"dtype":"F32","shape":[2,3],"data_offsets":[33800,33824]}})";
    write_raw(file("model.safetensors"), header, data);

    const mtp::checkpoint ck = mtp::checkpoint_open(dir.string());
    std::vector<float> w;
    ck.read_f32("layer.weight", w, {130, 260});
    ASSERT_EQ(w.size(), size_t(rows * cols));
    for (int64_t i = 0; i < rows; ++i)
        for (int64_t j = 0; j < cols; ++j) {
            const double want = ref_e4m3(q[size_t(i * cols + j)]) * scale[size_t((i / 128) * 3 + j / 128)];
            ASSERT_EQ(double(w[size_t(i * cols + j)]), want) << i << "," << j;
        }

    // A missing scale tensor or a scale of the wrong shape is an error naming the tensor.
    const std::string p2 = file("noscale.safetensors");
    write_raw(p2, R"({"layer.weight":{"dtype":"F8_E4M3","shape":[130,260],"data_offsets":[0,33800]}})", q);
    std::string msg = error_of([&] { std::vector<float> o; mtp::checkpoint_open(p2).read_f32("layer.weight", o); });
    EXPECT_EQ(msg.rfind(p2, 0), 0u) << msg;
    EXPECT_NE(msg.find("layer.weight_scale_inv"), std::string::npos) << msg;
    const std::string p3 = file("badscale.safetensors");
    write_raw(p3,
              R"({"layer.weight":{"dtype":"F8_E4M3","shape":[130,260],"data_offsets":[0,33800]},)"
              R"("layer.weight_scale_inv":{"dtype":"F32","shape":[3,2],"data_offsets":[33800,33824]}})",
              data);
    msg = error_of([&] { std::vector<float> o; mtp::checkpoint_open(p3).read_f32("layer.weight", o); });
    EXPECT_EQ(msg.rfind(p3, 0), 0u) << msg;
    EXPECT_NE(msg.find("[2, 3]"), std::string::npos) << msg;
}

TEST_F(SafetensorsTest, ShardedCheckpointWithIndex) {
    const std::vector<float> a = {1, 2, 3, 4}, b = {5, 6}, c = {7, 8, 9};
    mtp::st_write(file("model-00001-of-00002.safetensors"), {{"a", {2, 2}, a.data()}, {"b", {2}, b.data()}});
    mtp::st_write(file("model-00002-of-00002.safetensors"), {{"c", {3}, c.data(), mtp::dtype::bf16}});
    write_text(file("model.safetensors.index.json"),
               R"({"metadata":{"total_size":30},"weight_map":{"a":"model-00001-of-00002.safetensors",)"
               R"("b":"model-00001-of-00002.safetensors","c":"model-00002-of-00002.safetensors"}})");
    for (const std::string& p : {dir.string(), file("model.safetensors.index.json")}) {
        const mtp::checkpoint ck = mtp::checkpoint_open(p);
        EXPECT_EQ(ck.files.size(), 2u);
        EXPECT_EQ(ck.names(), (std::vector<std::string>{"a", "b", "c"}));
        std::vector<float> out;
        ck.read_f32("a", out, {2, 2});
        EXPECT_EQ(out, a);
        ck.read_f32("c", out, {3});
        EXPECT_EQ(out, c);
        EXPECT_EQ(ck.info("b").shape, std::vector<int64_t>{2});
    }
}

TEST_F(SafetensorsTest, MissingTensorAndWrongShapeInReadF32) {
    const std::vector<float> v(32, 1.0f);
    const std::string path = file("m.safetensors");
    mtp::st_write(path, {{"w", {8, 4}, v.data()}});
    const mtp::checkpoint ck = mtp::checkpoint_open(path);
    std::vector<float> out;
    std::string msg = error_of([&] { ck.read_f32("nope", out); });
    EXPECT_EQ(msg.rfind(path, 0), 0u) << msg;
    EXPECT_NE(msg.find("'nope'"), std::string::npos) << msg;
    msg = error_of([&] { ck.read_f32("w", out, {4, 8}); });
    EXPECT_EQ(msg.rfind(path, 0), 0u) << msg;
    EXPECT_NE(msg.find("'w'"), std::string::npos) << msg;
    EXPECT_NE(msg.find("[4, 8]"), std::string::npos) << msg;
    EXPECT_NE(msg.find("[8, 4]"), std::string::npos) << msg;
}

TEST_F(SafetensorsTest, RejectsTruncatedFiles) {
    const std::string p = file("t.safetensors");
    write_text(p, "abcde");
    expect_read_error(p, "too short");
    write_text(p, "");
    expect_read_error(p, "too short");
    write_raw(p, "{}", {}, 1000);   // header length past EOF
    expect_read_error(p, "past end of file");
    write_raw(p, "{}", {}, uint64_t(1) << 63);
    expect_read_error(p, "100 MB");
    const std::string missing = file("missing.safetensors");
    const std::string msg = error_of([&] { mtp::st_read(missing); });
    EXPECT_EQ(msg.rfind(missing, 0), 0u) << msg;
    EXPECT_NE(error_of([&] { mtp::checkpoint_open(missing); }).rfind(missing, 0), std::string::npos);
}

TEST_F(SafetensorsTest, RejectsBadJson) {
    const std::string p = file("j.safetensors");
    write_raw(p, "{\"a\": {\n", {});
    expect_read_error(p, "invalid JSON");
    write_raw(p, "[1, 2]", {});
    expect_read_error(p, "not a JSON object");
    write_raw(p, std::string(100000, '['), {});
    expect_read_error(p, "nested");
    write_raw(p, "{\"a\": \"\xff\"}", {});
    expect_read_error(p, "invalid JSON");
    write_raw(p, R"({"a": 5})", {});
    expect_read_error(p, "tensor 'a': entry is not a JSON object");
    write_raw(p, R"({"__metadata__": {"k": 1}})", {});
    expect_read_error(p, "__metadata__");
    write_raw(p, R"({"__metadata__": [1]})", {});
    expect_read_error(p, "__metadata__");
}

TEST_F(SafetensorsTest, RejectsUnknownDtypeAndBadFields) {
    const std::string p = file("d.safetensors");
    const std::vector<uint8_t> d8(8);
    write_raw(p, R"({"x":{"dtype":"F64","shape":[1],"data_offsets":[0,8]}})", d8);
    expect_read_error(p, "tensor 'x': unknown dtype 'F64'");
    write_raw(p, R"({"x":{"dtype":7,"shape":[2],"data_offsets":[0,8]}})", d8);
    expect_read_error(p, "tensor 'x'");
    write_raw(p, R"({"x":{"shape":[2],"data_offsets":[0,8]}})", d8);
    expect_read_error(p, "missing 'dtype'");
    write_raw(p, R"({"x":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", d8);
    expect_read_error(p, "shape[0]");
    write_raw(p, R"({"x":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})", d8);
    expect_read_error(p, "shape[0]");
    write_raw(p, R"({"x":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,8]}})", d8);
    expect_read_error(p, "too large");
    write_raw(p, R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8,9]}})", d8);
    expect_read_error(p, "data_offsets");
    write_raw(p, R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", d8);
    expect_read_error(p, "begin > end");
    write_raw(p, R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,-8]}})", d8);
    expect_read_error(p, "data_offsets");
    write_raw(p, R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"extra":1}})", d8);
    expect_read_error(p, "unknown field 'extra'");
}

TEST_F(SafetensorsTest, RejectsShapeSizeMismatch) {
    const std::string p = file("s.safetensors");
    write_raw(p, R"({"x":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", std::vector<uint8_t>(8));
    expect_read_error(p, "tensor 'x': shape [3] of F32 needs 12 bytes");
    write_raw(p, R"({"x":{"dtype":"BF16","shape":[2,2],"data_offsets":[0,4]}})", std::vector<uint8_t>(4));
    expect_read_error(p, "needs 8 bytes");
}

TEST_F(SafetensorsTest, RejectsOverlapsGapsAndTrailingBytes) {
    const std::string p = file("o.safetensors");
    const std::vector<uint8_t> d16(16);
    write_raw(p, R"({"x":{"dtype":"F32","shape":[3],"data_offsets":[0,12]},)"
                 R"("lm_head.weight":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})", std::vector<uint8_t>(12));
    expect_read_error(p, "overlap");
    write_raw(p, R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                 R"("y":{"dtype":"F32","shape":[1],"data_offsets":[12,16]}})", d16);
    expect_read_error(p, "gap");
    write_raw(p, R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", std::vector<uint8_t>(12));
    expect_read_error(p, "gap at the start");
    write_raw(p, R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", d16);
    expect_read_error(p, "ends at 8");
    write_raw(p, R"({"x":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", std::vector<uint8_t>(8));
    expect_read_error(p, "past the end of the data section");
    write_raw(p, "{}", std::vector<uint8_t>(4));
    expect_read_error(p, "no tensors");
    // An empty tensor inside another tensor's range overlaps it.
    write_raw(p, R"({"x":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
                 R"("e":{"dtype":"F32","shape":[0],"data_offsets":[8,8]}})", d16);
    expect_read_error(p, "overlap");
    // Empty data section with only empty tensors is fine.
    write_raw(p, R"({"e":{"dtype":"F16","shape":[0,3],"data_offsets":[0,0]},"__metadata__":{"a":"b"}})", {});
    EXPECT_EQ(mtp::st_read(p).tensors.size(), 1u);
}

TEST_F(SafetensorsTest, RejectsDuplicateNames) {
    const std::string p = file("dup.safetensors");
    write_raw(p, R"({"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                 R"("x":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", std::vector<uint8_t>(8));
    expect_read_error(p, "duplicate tensor name 'x'");
    write_raw(p, R"({"x":{"dtype":"F32","dtype":"F16","shape":[1],"data_offsets":[0,4]}})", std::vector<uint8_t>(4));
    expect_read_error(p, "duplicate key 'dtype' in 'x'");
}

TEST_F(SafetensorsTest, RejectsBadIndexes) {
    const std::vector<float> a = {1, 2}, b = {3};
    mtp::st_write(file("s1.safetensors"), {{"a", {2}, a.data()}});
    mtp::st_write(file("s2.safetensors"), {{"b", {1}, b.data()}, {"a", {2}, a.data()}});
    const std::string idx = file("model.safetensors.index.json");
    auto expect_index_error = [&](const std::string& text, const std::string& word) {
        write_text(idx, text);
        const std::string msg = error_of([&] { mtp::checkpoint_open(dir.string()); });
        EXPECT_EQ(msg.rfind(idx, 0), 0u) << msg;
        EXPECT_NE(msg.find(word), std::string::npos) << msg;
    };
    expect_index_error(R"({"weight_map":{"a":"s1.safetensors","z":"s3.safetensors"}})", "does not exist");
    expect_index_error(R"({"weight_map":{"a":"s1.safetensors","q":"s1.safetensors"}})", "does not contain it");
    expect_index_error(R"({"weight_map":{"a":"s1.safetensors","b":"s2.safetensors"}})", "appears in both shard");
    expect_index_error(R"({"weight_map": {)", "invalid JSON");
    expect_index_error(R"({"weight_map":[]})", "'weight_map' is not an object");
    expect_index_error(R"({"meta":{}})", "missing 'weight_map'");
    expect_index_error(R"({"weight_map":{"a":"s1.safetensors","a":"s1.safetensors"}})", "duplicate key 'a'");
    expect_index_error(R"({"weight_map":{"a":"../s1.safetensors"}})", "bad shard file name");
    expect_index_error(R"({"weight_map":{"a":7}})", "not a string");
    // A shard holding a tensor the index does not list.
    mtp::st_write(file("s2.safetensors"), {{"b", {1}, b.data()}, {"c", {1}, b.data()}});
    expect_index_error(R"({"weight_map":{"a":"s1.safetensors","b":"s2.safetensors"}})", "does not list");
    // A broken shard reports the shard's own path.
    write_text(file("s2.safetensors"), "xx");
    write_text(idx, R"({"weight_map":{"a":"s1.safetensors","b":"s2.safetensors"}})");
    const std::string msg = error_of([&] { mtp::checkpoint_open(dir.string()); });
    EXPECT_EQ(msg.rfind(file("s2.safetensors"), 0), 0u) << msg;
    // An empty directory.
    fs::create_directories(dir / "sub");
    EXPECT_NE(error_of([&] { mtp::checkpoint_open((dir / "sub").string()); }).find("neither"), std::string::npos);
}

TEST_F(SafetensorsTest, MutatedFilesNeverCrash) {
    const std::vector<float> a = {1, 2, 3, 4, 5, 6}, b = {7, 8};
    const std::string good = file("good.safetensors");
    mtp::st_write(good, {{"a", {2, 3}, a.data(), mtp::dtype::bf16}, {"b", {2}, b.data()}}, {{"k", "v"}});
    std::ifstream in(good, std::ios::binary);
    const std::vector<uint8_t> orig((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const std::string p = file("mut.safetensors");
    auto attempt = [&](const std::vector<uint8_t>& bytes) {
        std::ofstream(p, std::ios::binary | std::ios::trunc)
            .write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
        try {
            const mtp::checkpoint ck = mtp::checkpoint_open(p);
            std::vector<float> out;
            for (const std::string& n : ck.names()) ck.read_f32(n, out);
        } catch (const mtp::error& e) {
            EXPECT_EQ(std::string(e.what()).rfind(p, 0), 0u) << e.what();
        }
    };
    for (size_t len = 0; len < orig.size(); ++len)
        attempt(std::vector<uint8_t>(orig.begin(), orig.begin() + std::ptrdiff_t(len)));
    std::mt19937 rng(12345);
    for (int k = 0; k < 3000; ++k) {
        std::vector<uint8_t> m = orig;
        const int edits = 1 + int(rng() % 3);
        for (int e = 0; e < edits; ++e) {
            const size_t at = rng() % m.size();
            const char* pool = "0123456789[]{},:\"-eE. aFxB";
            m[at] = (rng() % 2) ? uint8_t(rng()) : uint8_t(pool[rng() % 26]);
        }
        attempt(m);
    }
}
