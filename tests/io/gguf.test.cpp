#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include <unistd.h>

#include "peft/core/random.hpp"
#include "peft/io/gguf.hpp"
#include "../support/temp_dir.hpp"

using namespace peft;
using io::ggml_type;
using io::gguf_file;
using io::gguf_value;
using io::gguf_value_type;

namespace {
using test::temp_dir;

// Builds GGUF bytes by hand, independently of the writer under test.
struct builder {
  std::vector<std::uint8_t> b;
  builder& raw(std::initializer_list<std::uint8_t> x) {
    b.insert(b.end(), x);
    return *this;
  }
  template <class U>
  builder& le(U v) {
    std::uint8_t t[sizeof(U)];
    std::memcpy(t, &v, sizeof(U));
    b.insert(b.end(), t, t + sizeof(U));
    return *this;
  }
  builder& u32(std::uint32_t v) { return le(v); }
  builder& u64(std::uint64_t v) { return le(v); }
  builder& str(const std::string& s) {
    u64(s.size());
    b.insert(b.end(), s.begin(), s.end());
    return *this;
  }
  builder& header(std::uint64_t n_tensors, std::uint64_t n_kv, std::uint32_t version = 3) {
    raw({'G', 'G', 'U', 'F'});
    u32(version);
    u64(n_tensors);
    return u64(n_kv);
  }
  builder& kv_u32(const std::string& k, std::uint32_t v) { return str(k).u32(4).u32(v); }
  // name, dims, type, offset
  builder& info(const std::string& name, std::vector<std::uint64_t> ne, std::uint32_t type, std::uint64_t off) {
    str(name).u32(std::uint32_t(ne.size()));
    for (auto d : ne) u64(d);
    return u32(type).u64(off);
  }
  builder& pad(std::size_t a = 32) {
    while (b.size() % a) b.push_back(0);
    return *this;
  }
  builder& f32s(std::initializer_list<float> xs) {
    for (float x : xs) le(x);
    return *this;
  }
  builder& zeros(std::size_t n) {
    b.insert(b.end(), n, 0);
    return *this;
  }
};

std::string parse_error(const std::vector<std::uint8_t>& bytes) {
  try {
    gguf_file::parse(bytes.data(), bytes.size(), "t.gguf");
  } catch (const io_error& e) {
    return e.what();
  }
  return "<no io_error>";
}


// A file with every value type, nested and empty arrays, and tensors of several types.
gguf_file sample_file() {
  gguf_file f;
  f.set("general.architecture", "llama");
  f.set("u8", std::uint8_t(200));
  f.set("i8", std::int8_t(-100));
  f.set("u16", std::uint16_t(60000));
  f.set("i16", std::int16_t(-30000));
  f.set("u32", std::uint32_t(4000000000u));
  f.set("i32", std::int32_t(-2000000000));
  f.set("f32", 1.5f);
  f.set("bool", true);
  f.set("u64", std::uint64_t(1) << 60);
  f.set("i64", std::int64_t(-1) << 60);
  f.set("f64", 0.1);
  f.set("str", std::string("h\xc3\xa9llo"));
  f.set("arr.f32", gguf_value::array(std::vector<float>{1.f, -2.f, 3.5f}));
  f.set("arr.str", gguf_value::array(std::vector<std::string>{"a", "", "ccc"}));
  f.set("arr.bool", gguf_value::array(std::vector<bool>{true, false}));
  f.set("arr.i32.empty", gguf_value::array(std::vector<std::int32_t>{}));
  f.set("arr.nested", gguf_value::array(std::vector<gguf_value>{
                          gguf_value::array(std::vector<std::uint8_t>{1, 2}),
                          gguf_value::array(std::vector<std::string>{"x"})}));
  rng g(7);
  f.add_tensor("a.f32", randn<float>({2, 3}, g));
  f.add_tensor("b.f16", randn<float>({5}, g), ggml_type::F16);
  f.add_tensor("c.bf16", randn<float>({2, 1, 3, 4}, g), ggml_type::BF16);
  f.add_tensor("d.f64", randn<double>({3, 2}, g), ggml_type::F64);
  return f;
}

}  // namespace

TEST_CASE("the writer's bytes follow the GGUF v3 layout exactly", "[io][gguf]") {
  gguf_file f;
  f.set("general.alignment", std::uint32_t(32));
  f.add_tensor("w", ggml_type::F32, {2}, std::vector<std::uint8_t>(8, 0));
  tensor<float> t = make_tensor<float>({2, 1}, {1.0f, -2.0f});
  // A [2,1] tensor is ne = [1, 2] in ggml order.
  f.add_tensor("x", t);

  builder e;
  e.header(2, 1).kv_u32("general.alignment", 32);
  e.info("w", {2}, 0, 0).info("x", {1, 2}, 0, 32);
  e.pad().zeros(8).pad().f32s({1.0f, -2.0f}).pad();
  CHECK(f.serialize() == e.b);
  CHECK(f.tensor_at("x").ne == std::vector<std::uint64_t>{1, 2});
  CHECK(f.tensor_at("x").shape() == shape_t{2, 1});
}

TEST_CASE("a hand-built file parses to the values it holds", "[io][gguf]") {
  builder e;
  e.header(1, 3);
  e.str("k.bool").u32(7).raw({1});
  e.str("k.arr").u32(9).u32(8).u64(2).str("ab").str("c");
  e.str("k.f64").u32(12).le(2.25);
  e.info("t", {3, 2}, 0, 0).pad().f32s({1, 2, 3, 4, 5, 6}).pad();
  const auto f = gguf_file::parse(e.b.data(), e.b.size(), "h.gguf");
  CHECK(f.get<bool>("k.bool") == true);
  CHECK(f.at("k.arr").get_array<std::string>() == std::vector<std::string>{"ab", "c"});
  CHECK(f.get<double>("k.f64") == 2.25);
  const auto t = f.get_tensor<double>("t");
  CHECK(shape_of(t) == shape_t{2, 3});
  CHECK(t(1, 0) == 4.0);
  CHECK(t(0, 2) == 3.0);
  CHECK(f.alignment() == 32);
}

TEST_CASE("serialize -> parse round-trips every value type and tensor bit for bit", "[io][gguf]") {
  const gguf_file f = sample_file();
  const auto bytes = f.serialize();
  const gguf_file g = gguf_file::parse(bytes.data(), bytes.size());
  REQUIRE(g.metadata().size() == f.metadata().size());
  for (std::size_t i = 0; i < f.metadata().size(); ++i) {
    INFO(f.metadata()[i].first);
    CHECK(g.metadata()[i].first == f.metadata()[i].first);
    CHECK(g.metadata()[i].second == f.metadata()[i].second);
  }
  CHECK(g.tensor_names() == f.tensor_names());
  for (auto& [name, t] : f.tensors()) {
    INFO(name);
    CHECK(g.tensor_at(name).type == t.type);
    CHECK(g.tensor_at(name).ne == t.ne);
    CHECK(g.tensor_at(name).data == t.data);
  }
  CHECK(g.serialize() == bytes);
  // Every tensor starts at an aligned offset, so the data section is 32-aligned.
  CHECK(g.at("arr.nested").get_array<gguf_value>()[1].get_array<std::string>()[0] == "x");
  CHECK(g.at("arr.i32.empty").elem_type() == gguf_value_type::int32);
  CHECK(g.at("arr.i32.empty").array_size() == 0);
  CHECK(g.get<std::int64_t>("i64") == (std::int64_t(-1) << 60));
}

TEST_CASE("F32 and F64 tensors convert exactly; F16 and BF16 round to nearest", "[io][gguf]") {
  rng g(3);
  const tensor<double> x = randn<double>({4, 8}, g);
  gguf_file f;
  f.add_tensor("f32", x, ggml_type::F32);
  f.add_tensor("f64", x, ggml_type::F64);
  f.add_tensor("f16", x, ggml_type::F16);
  f.add_tensor("bf16", x, ggml_type::BF16);
  const auto bytes = f.serialize();
  const auto h = gguf_file::parse(bytes.data(), bytes.size());
  const auto y64 = h.get_tensor<double>("f64");
  const auto y32 = h.get_tensor<double>("f32");
  const auto y16 = h.get_tensor<float>("f16");
  const auto yb = h.get_tensor<float>("bf16");
  for (std::size_t i = 0; i < x.size(); ++i) {
    CHECK(y64.data()[i] == x.data()[i]);
    CHECK(y32.data()[i] == double(float(x.data()[i])));
    CHECK_THAT(double(y16.data()[i]), Catch::Matchers::WithinRel(x.data()[i], 1e-3));
    CHECK_THAT(double(yb.data()[i]), Catch::Matchers::WithinRel(x.data()[i], 8e-3));
  }
  CHECK(h.tensor_at("f16").data.size() == 64);
}

TEST_CASE("Q8_0, Q4_0 and Q4_1 blocks decode as ggml defines them", "[io][gguf]") {
  // Q8_0: f16 d = 0.5 (0x3800), int8 q[j] = j - 16  ->  x = 0.5 (j - 16)
  std::vector<std::uint8_t> q8{0x00, 0x38};
  for (int j = 0; j < 32; ++j) q8.push_back(std::uint8_t(std::int8_t(j - 16)));
  // Q4_0: d = 2 (0x4000), byte j = (j) | (15 - j) << 4 -> x[j] = 2 (j - 8), x[j+16] = 2 (7 - j)
  std::vector<std::uint8_t> q4{0x00, 0x40};
  for (int j = 0; j < 16; ++j) q4.push_back(std::uint8_t(j | (15 - j) << 4));
  // Q4_1: d = 1, m = -1 (0xBC00), same nibbles -> x[j] = j - 1, x[j+16] = 14 - j
  std::vector<std::uint8_t> q41{0x00, 0x3c, 0x00, 0xbc};
  for (int j = 0; j < 16; ++j) q41.push_back(std::uint8_t(j | (15 - j) << 4));
  gguf_file f;
  f.add_tensor("q8", ggml_type::Q8_0, {32}, q8);
  f.add_tensor("q4", ggml_type::Q4_0, {32}, q4);
  f.add_tensor("q41", ggml_type::Q4_1, {32}, q41);
  const auto a = f.get_tensor<float>("q8"), b = f.get_tensor<float>("q4"), c = f.get_tensor<float>("q41");
  for (int j = 0; j < 32; ++j) CHECK(a(j) == 0.5f * float(j - 16));
  for (int j = 0; j < 16; ++j) {
    CHECK(b(j) == 2.0f * float(j - 8));
    CHECK(b(j + 16) == 2.0f * float(7 - j));
    CHECK(c(j) == float(j - 1));
    CHECK(c(j + 16) == float(14 - j));
  }
  // Other quantized types are parsed (sizes known) but not converted.
  f.add_tensor("k", ggml_type::Q4_K, {256}, std::vector<std::uint8_t>(144, 0));
  try {
    (void)f.get_tensor<float>("k");
    FAIL("no io_error");
  } catch (const io_error& e) {
    CHECK_THAT(e.what(), Catch::Matchers::Contains("cannot convert Q4_K"));
  }
  CHECK_THROWS_AS(f.add_tensor("q8b", ggml_type::Q8_0, {31}, std::vector<std::uint8_t>(34)), value_error);
}

TEST_CASE("custom alignment pads the data section and every tensor to it", "[io][gguf]") {
  gguf_file f;
  f.set("general.alignment", std::uint32_t(64));
  f.add_tensor("a", ggml_type::F32, {3}, std::vector<std::uint8_t>(12, 1));
  f.add_tensor("b", ggml_type::F32, {1}, std::vector<std::uint8_t>(4, 2));
  const auto bytes = f.serialize();
  CHECK(bytes.size() % 64 == 0);
  const auto g = gguf_file::parse(bytes.data(), bytes.size());
  CHECK(g.alignment() == 64);
  CHECK(g.tensor_at("b").data == std::vector<std::uint8_t>(4, 2));
  // The same bytes declared 32-aligned leave a gap: rejected.
  CHECK_THROWS_AS(f.set("general.alignment", std::uint32_t(48)), value_error);
  CHECK_THROWS_AS(f.set("general.alignment", 64.0f), value_error);
}

TEST_CASE("typed access names the key and both types", "[io][gguf]") {
  const gguf_file f = sample_file();
  try {
    (void)f.get<std::uint32_t>("f32");
    FAIL("no io_error");
  } catch (const io_error& e) {
    CHECK_THAT(e.what(), Catch::Matchers::Contains("'f32' is FLOAT32, expected UINT32"));
  }
  CHECK_THROWS_WITH(f.at("nope"), Catch::Matchers::Contains("missing metadata key 'nope'"));
  CHECK_THROWS_WITH(f.tensor_at("nope"), Catch::Matchers::Contains("no tensor 'nope'"));
  CHECK_THROWS_AS(f.at("f32").get<double>(), value_error);
  CHECK_THROWS_AS(f.at("arr.f32").get_array<double>(), value_error);
  CHECK_THROWS_AS(f.at("f32").array_size(), value_error);
  CHECK(f.at("u32").to_int64() == 4000000000LL);
  CHECK(f.at("i8").to_int64() == -100);
  CHECK_THROWS_AS(f.at("i8").to_uint64(), value_error);
  CHECK(f.at("f32").to_double() == 1.5);
  CHECK_THROWS_AS(f.at("str").to_int64(), value_error);
  CHECK_THROWS_AS(gguf_value::array(std::vector<gguf_value>{gguf_value(1.0f)}), value_error);
}

TEST_CASE("the writer refuses what llama.cpp's reader would reject", "[io][gguf]") {
  gguf_file f;
  CHECK_THROWS_AS(f.set("", 1.0f), value_error);
  CHECK_THROWS_AS(f.set("bad\xff", 1.0f), value_error);
  CHECK_THROWS_AS(f.add_tensor("", ggml_type::F32, {1}, std::vector<std::uint8_t>(4)), value_error);
  CHECK_THROWS_AS(f.add_tensor(std::string(64, 'n'), ggml_type::F32, {1}, std::vector<std::uint8_t>(4)), value_error);
  CHECK_NOTHROW(f.add_tensor(std::string(63, 'n'), ggml_type::F32, {1}, std::vector<std::uint8_t>(4)));
  CHECK_THROWS_AS(f.add_tensor(std::string(63, 'n'), ggml_type::F32, {1}, std::vector<std::uint8_t>(4)), value_error);
  CHECK_THROWS_WITH(f.add_tensor("m", ggml_type::F32, {2}, std::vector<std::uint8_t>(4)),
                    Catch::Matchers::Contains("has 4 bytes"));
  CHECK_THROWS_AS(f.add_tensor("m", ggml_type(4), {1}, std::vector<std::uint8_t>(4)), value_error);
  CHECK_THROWS_AS(f.add_tensor("m", ggml_type::F32, {1, 1, 1, 1, 1}, std::vector<std::uint8_t>(4)), value_error);
  CHECK_THROWS_AS(f.add_tensor("m", tensor<float>(zeros<float>({2})), ggml_type::Q8_0), value_error);
}

TEST_CASE("save is atomic and load reads it back", "[io][gguf]") {
  temp_dir d;
  const gguf_file f = sample_file();
  f.save(d / "m.gguf");
  const auto g = gguf_file::load(d / "m.gguf");
  CHECK(g.source() == d / "m.gguf");
  CHECK(g.serialize() == f.serialize());
  std::size_t files = 0;
  for ([[maybe_unused]] auto& e : std::filesystem::directory_iterator(d.path)) ++files;
  CHECK(files == 1);
  CHECK_THROWS_AS(f.save(d / "missing_dir/m.gguf"), io_error);
  CHECK_THROWS_WITH(gguf_file::load(d / "absent.gguf"), Catch::Matchers::Contains("absent.gguf"));
  const auto all = io::load_gguf_tensors<float>(d / "m.gguf");
  CHECK(all.size() == 4);
  CHECK(shape_of(all.at("c.bf16")) == shape_t{2, 1, 3, 4});
}

TEST_CASE("files without tensors parse with or without trailing padding", "[io][gguf]") {
  builder e;
  e.header(0, 1).kv_u32("a", 1);
  CHECK_NOTHROW(gguf_file::parse(e.b.data(), e.b.size()));
  builder p = e;
  p.pad();
  CHECK_NOTHROW(gguf_file::parse(p.b.data(), p.b.size()));
  p.zeros(1);
  CHECK_THAT(parse_error(p.b), Catch::Matchers::Contains("trailing bytes"));
  gguf_file empty;
  const auto bytes = empty.serialize();
  CHECK(bytes.size() == 24);
  CHECK_NOTHROW(gguf_file::parse(bytes.data(), bytes.size()));
}

TEST_CASE("malformed files are rejected with io_error naming the file and the problem", "[io][gguf]") {
  using B = builder;
  // Valid reference: 1 kv, 2 tensors of 2 floats.
  auto valid = [] {
    B e;
    e.header(2, 1).kv_u32("general.alignment", 32);
    e.info("a", {2}, 0, 0).info("b", {2}, 0, 32).pad().zeros(8).pad().zeros(8).pad();
    return e;
  };
  REQUIRE(parse_error(valid().b) == "<no io_error>");

  struct bad_case {
    const char* what;
    std::vector<std::uint8_t> bytes;
    const char* expect;
  };
  std::vector<bad_case> cases;
  cases.push_back({"empty", {}, "too short for the magic"});
  cases.push_back({"bad magic", B().raw({'G', 'G', 'M', 'L'}).u32(3).u64(0).u64(0).b, "bad magic"});
  cases.push_back({"version 1", B().header(0, 0, 1).b, "unsupported GGUF version 1"});
  cases.push_back({"version 4", B().header(0, 0, 4).b, "unsupported GGUF version 4"});
  cases.push_back({"big endian", B().header(0, 0, 0x03000000).b, "big-endian"});
  cases.push_back({"truncated header", B().raw({'G', 'G', 'U', 'F'}).u32(3).u64(0).b, "unexpected end of file reading metadata count"});
  cases.push_back({"huge kv count", B().header(0, ~0ull).b, "metadata count"});
  cases.push_back({"huge tensor count", B().header(1ull << 62, 0).b, "tensor count"});
  cases.push_back({"key length past end", B().header(0, 1).u64(1000).raw({'a'}).zeros(16).b, "length 1000 exceeds the"});
  cases.push_back({"key length huge", B().header(0, 1).u64(~0ull).u32(4).u32(1).b, "exceeds the"});
  cases.push_back({"empty key", B().header(0, 1).str("").u32(4).u32(1).b, "is empty"});
  cases.push_back({"non-UTF-8 key", B().header(0, 1).str("k\xc0\x80").u32(4).u32(1).b, "not valid UTF-8"});
  cases.push_back({"duplicate key", B().header(0, 2).kv_u32("k", 1).kv_u32("k", 2).b, "duplicate metadata key 'k'"});
  cases.push_back({"unknown value type", B().header(0, 1).str("k").u32(13).u32(0).b, "unknown value type 13"});
  cases.push_back({"bool 2", B().header(0, 1).str("k").u32(7).raw({2}).b, "BOOL with byte value 2"});
  cases.push_back({"truncated value", B().header(0, 1).str("k").u32(10).u32(1).b, "unexpected end of file"});
  cases.push_back({"string past end", B().header(0, 1).str("k").u32(8).u64(99).b, "length 99 exceeds"});
  cases.push_back({"array count huge", B().header(0, 1).str("k").u32(9).u32(6).u64(1ull << 61).b, "elements, more than"});
  cases.push_back({"array of strings too many", B().header(0, 1).str("k").u32(9).u32(8).u64(3).zeros(16).b, "elements, more than"});
  cases.push_back({"array unknown elem", B().header(0, 1).str("k").u32(9).u32(77).u64(0).b, "unknown value type 77"});
  {
    B e;
    e.header(0, 1).str("k").u32(9);
    for (int i = 0; i < 9; ++i) e.u32(9).u64(1);
    e.u32(4).u64(0);
    cases.push_back({"arrays nested too deep", e.b, "nest deeper than 8"});
  }
  cases.push_back({"alignment not u32", B().header(0, 1).str("general.alignment").u32(10).u64(32).b, "must be UINT32"});
  cases.push_back({"alignment 0", B().header(0, 1).kv_u32("general.alignment", 0).b, "not a power of two"});
  cases.push_back({"alignment 48", B().header(0, 1).kv_u32("general.alignment", 48).b, "not a power of two"});
  auto one_tensor = [](const std::string& name, std::vector<std::uint64_t> ne, std::uint32_t type, std::uint64_t off,
                       std::size_t data) {
    B e;
    e.header(1, 0).info(name, std::move(ne), type, off).pad().zeros(data);
    return e.b;
  };
  cases.push_back({"empty tensor name", one_tensor("", {1}, 0, 0, 32), "name is empty"});
  cases.push_back({"tensor name 64 bytes", one_tensor(std::string(64, 'x'), {1}, 0, 0, 32), "64 bytes long"});
  cases.push_back({"tensor name not UTF-8", one_tensor("\xff", {1}, 0, 0, 32), "not valid UTF-8"});
  cases.push_back({"5 dims", one_tensor("t", {1, 1, 1, 1, 1}, 0, 0, 32), "5 dimensions"});
  cases.push_back({"dim beyond int64", one_tensor("t", {1ull << 63}, 0, 0, 32), "exceeds int64"});
  cases.push_back({"elements overflow", one_tensor("t", {1ull << 32, 1ull << 32}, 0, 0, 32), "overflows int64"});
  cases.push_back({"bytes overflow", one_tensor("t", {1ull << 62}, 0, 0, 32), "byte count"});
  cases.push_back({"retired type 4", one_tensor("t", {32}, 4, 0, 32), "unknown ggml type 4"});
  cases.push_back({"type 1000", one_tensor("t", {32}, 1000, 0, 32), "unknown ggml type 1000"});
  cases.push_back({"block size", one_tensor("t", {31}, 8, 0, 64), "not a multiple of Q8_0's block size 32"});
  cases.push_back({"unaligned offset", one_tensor("t", {1}, 0, 4, 32), "not a multiple of the alignment"});
  cases.push_back({"offset past end", one_tensor("t", {1}, 0, 64, 32), "outside the 32-byte data section"});
  cases.push_back({"offset huge", one_tensor("t", {1}, 0, ~0ull - 31, 32), "outside the"});
  cases.push_back({"truncated data", one_tensor("t", {16}, 0, 0, 32), "outside the 32-byte data section"});
  cases.push_back({"no data section", B().header(1, 0).info("t", {1}, 0, 0).b, "before the data section"});
  cases.push_back({"trailing bytes", one_tensor("t", {8}, 0, 0, 64), "trailing bytes"});
  {
    B e;
    e.header(2, 0).info("a", {16}, 0, 0).info("b", {16}, 0, 32).pad().zeros(96);
    cases.push_back({"overlap", e.b, "overlaps tensor 'a'"});
  }
  {
    B e;
    e.header(2, 0).info("a", {2}, 0, 0).info("b", {2}, 0, 64).pad().zeros(96);
    cases.push_back({"gap", e.b, "gap of 56 bytes before tensor 'b'"});
  }
  {
    B e;
    e.header(2, 0).info("a", {2}, 0, 0).info("a", {2}, 0, 32).pad().zeros(64);
    cases.push_back({"duplicate tensor", e.b, "duplicate tensor 'a'"});
  }
  {
    B e;
    e.header(1, 0).str("t").u32(1).u64(2).u32(0);  // offset missing
    cases.push_back({"truncated info", e.b, "unexpected end of file reading tensor 't' offset"});
  }
  for (auto& c : cases) {
    INFO(c.what);
    const std::string msg = parse_error(c.bytes);
    CHECK_THAT(msg, Catch::Matchers::Contains("gguf 't.gguf'"));
    CHECK_THAT(msg, Catch::Matchers::Contains(c.expect));
  }
}

TEST_CASE("every truncation and many byte corruptions of a valid file give io_error or a valid file",
          "[io][gguf]") {
  const auto bytes = sample_file().serialize();
  // The last tensor (3x2 F64 = 48 bytes) is followed by 16 bytes of padding, which may be cut.
  const std::size_t content_end = bytes.size() - 16;
  for (std::size_t n = 0; n < bytes.size(); ++n) {
    std::vector<std::uint8_t> cut(bytes.begin(), bytes.begin() + std::ptrdiff_t(n));
    INFO("prefix " << n);
    if (n < content_end)
      CHECK_THROWS_AS(gguf_file::parse(cut.data(), cut.size()), io_error);
    else
      CHECK_NOTHROW(gguf_file::parse(cut.data(), cut.size()));
  }
  rng g(11);
  std::size_t ok = 0, rejected = 0;
  for (int trial = 0; trial < 3000; ++trial) {
    auto m = bytes;
    const int flips = 1 + int(g.uniform_int(3));
    for (int k = 0; k < flips; ++k) m[g.uniform_int(m.size())] = std::uint8_t(g.uniform_int(256));
    try {
      const auto f = gguf_file::parse(m.data(), m.size());
      for (auto& [name, t] : f.tensors())
        if (io::ggml_type_decodable(t.type)) (void)f.get_tensor<double>(name);
      ++ok;
    } catch (const io_error&) {
      ++rejected;
    }
  }
  CHECK(ok + rejected == 3000);
  CHECK(rejected > 0);
}

// Regenerates the fuzzing seed corpus (fuzz/gguf_fuzz.cpp, scripts/fuzz_smoke.sh):
//   test_io_gguf "[.seeds]"   (run from any directory; writes tests/io/data/gguf/*.gguf)
TEST_CASE("write the GGUF fuzzing seed corpus", "[.seeds]") {
  const auto dir = std::filesystem::path(__FILE__).parent_path() / "data" / "gguf";
  std::filesystem::create_directories(dir);
  gguf_file empty;
  empty.save((dir / "empty.gguf").string());
  sample_file().save((dir / "all_types.gguf").string());
  gguf_file q;
  q.set("general.alignment", std::uint32_t(64));
  q.add_tensor("q8", ggml_type::Q8_0, {32, 2}, std::vector<std::uint8_t>(68, 1));
  q.add_tensor("q4", ggml_type::Q4_0, {32}, std::vector<std::uint8_t>(18, 0x3c));
  q.add_tensor("q41", ggml_type::Q4_1, {32}, std::vector<std::uint8_t>(20, 0x3c));
  q.add_tensor("k", ggml_type::Q4_K, {256}, std::vector<std::uint8_t>(144, 0));
  q.add_tensor("i32", ggml_type::I32, {3}, std::vector<std::uint8_t>(12, 7));
  q.save((dir / "quantized_align64.gguf").string());
  // A complete tiny llama (vocab 8, dim 4, 1 layer), so the llama mapping gets fuzzed too.
  gguf_file l;
  l.set("general.architecture", "llama");
  l.set("llama.embedding_length", std::uint32_t(4));
  l.set("llama.block_count", std::uint32_t(1));
  l.set("llama.feed_forward_length", std::uint32_t(4));
  l.set("llama.attention.head_count", std::uint32_t(2));
  l.set("llama.attention.head_count_kv", std::uint32_t(1));
  l.set("llama.context_length", std::uint32_t(16));
  l.set("llama.rope.freq_base", 10000.0f);
  l.set("llama.attention.layer_norm_rms_epsilon", 1e-5f);
  rng g(1);
  l.add_tensor("token_embd.weight", randn<float>({8, 4}, g));
  l.add_tensor("output_norm.weight", randn<float>({4}, g));
  for (const char* n : {"attn_norm", "ffn_norm"}) l.add_tensor(std::string("blk.0.") + n + ".weight", randn<float>({4}, g));
  l.add_tensor("blk.0.attn_q.weight", randn<float>({4, 4}, g), ggml_type::F16);
  l.add_tensor("blk.0.attn_k.weight", randn<float>({2, 4}, g));
  l.add_tensor("blk.0.attn_v.weight", randn<float>({2, 4}, g), ggml_type::BF16);
  l.add_tensor("blk.0.attn_output.weight", randn<float>({4, 4}, g));
  for (const char* n : {"ffn_gate", "ffn_up", "ffn_down"}) l.add_tensor(std::string("blk.0.") + n + ".weight", randn<float>({4, 4}, g));
  l.save((dir / "tiny_llama.gguf").string());
}
