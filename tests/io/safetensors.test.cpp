#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include <unistd.h>

#include "peft/core/random.hpp"
#include "peft/io/safetensors.hpp"
#include "../support/temp_dir.hpp"
#include "../support/thrown.hpp"

using namespace peft;
using io::dtype;

namespace {
using test::temp_dir;
std::string data_dir() { return (std::filesystem::path(__FILE__).parent_path() / "data").string(); }
std::string corpus(const std::string& name) { return data_dir() + "/safetensors/" + name; }

std::vector<std::uint8_t> read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}


std::string thrown_message(const std::function<void()>& f) {
  return test::thrown_message<io_error>(f);
}
}  // namespace

TEST_CASE("writer output matches the reference serializer byte for byte", "[io][safetensors]") {
  // Test vectors of huggingface/safetensors (safetensors/src/tensor.rs: test_serialization,
  // test_serialization_forced_alignement, test_empty).
  io::safetensors_file f;
  f.add("attn.0", make_tensor<float>({1, 2, 3}, {0, 1, 2, 3, 4, 5}));
  const std::vector<std::uint8_t> want = {
      64, 0, 0, 0, 0, 0, 0, 0, 123, 34, 97, 116, 116, 110, 46, 48, 34, 58, 123, 34, 100, 116, 121, 112, 101, 34, 58,
      34, 70, 51, 50, 34, 44, 34, 115, 104, 97, 112, 101, 34, 58, 91, 49, 44, 50, 44, 51, 93, 44, 34, 100, 97, 116,
      97, 95, 111, 102, 102, 115, 101, 116, 115, 34, 58, 91, 48, 44, 50, 52, 93, 125, 125, 0, 0, 0, 0, 0, 0, 128, 63,
      0, 0, 0, 64, 0, 0, 64, 64, 0, 0, 128, 64, 0, 0, 160, 64};
  CHECK(f.serialize() == want);

  io::safetensors_file g;
  g.add("attn0", make_tensor<float>({1, 1, 2, 3}, {0, 1, 2, 3, 4, 5}));
  const std::vector<std::uint8_t> want_padded = {
      72, 0, 0, 0, 0, 0, 0, 0, 123, 34, 97, 116, 116, 110, 48, 34, 58, 123, 34, 100, 116, 121, 112, 101, 34, 58, 34,
      70, 51, 50, 34, 44, 34, 115, 104, 97, 112, 101, 34, 58, 91, 49, 44, 49, 44, 50, 44, 51, 93, 44, 34, 100, 97,
      116, 97, 95, 111, 102, 102, 115, 101, 116, 115, 34, 58, 91, 48, 44, 50, 52, 93, 125, 125, 32, 32, 32, 32, 32,
      32, 32, 0, 0, 0, 0, 0, 0, 128, 63, 0, 0, 0, 64, 0, 0, 64, 64, 0, 0, 128, 64, 0, 0, 160, 64};
  CHECK(g.serialize() == want_padded);

  io::safetensors_file empty;
  CHECK(empty.serialize() == std::vector<std::uint8_t>{8, 0, 0, 0, 0, 0, 0, 0, 123, 125, 32, 32, 32, 32, 32, 32});
  empty.metadata()["framework"] = "pt";
  const std::string meta = "{\"__metadata__\":{\"framework\":\"pt\"}}     ";
  std::vector<std::uint8_t> want_meta(8 + meta.size(), 0);
  want_meta[0] = 40;
  std::copy(meta.begin(), meta.end(), want_meta.begin() + 8);
  CHECK(empty.serialize() == want_meta);
}

TEST_CASE("header parses back: sorted by alignment then name, contiguous, 8-byte aligned", "[io][safetensors]") {
  io::safetensors_file f;
  rng g(1);
  f.add("z.small", randn<float>({3}, g), dtype::F16);
  f.add("b.double", randn<double>({2, 3}, g));
  f.add("a.float", randn<float>({5}, g));
  f.add("c.bf", randn<float>({1, 1}, g), dtype::BF16);
  f.add("d.bytes", dtype::U8, {3}, {1, 2, 3});
  f.add("e.i64", dtype::I64, {1}, std::vector<std::uint8_t>(8, 0));
  f.metadata()["format"] = "pt";
  const auto bytes = f.serialize();
  std::uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  REQUIRE(n % 8 == 0);
  REQUIRE(8 + n <= bytes.size());
  const std::string text(bytes.begin() + 8, bytes.begin() + 8 + std::ptrdiff_t(n));
  REQUIRE(text == f.header());
  REQUIRE(text.find_last_not_of(' ') == text.rfind('}'));
  // Key order in the text (nlohmann's object would sort it): __metadata__ first, then dtypes by
  // descending alignment (I64 > F64 > F32 > BF16 > F16 > U8), names ascending within a dtype.
  const std::vector<std::string> order = {"__metadata__", "e.i64", "b.double", "a.float", "c.bf", "z.small", "d.bytes"};
  std::size_t pos = 0;
  for (auto& k : order) {
    const auto at = text.find("\"" + k + "\"", pos);
    INFO(k);
    REQUIRE(at != std::string::npos);
    pos = at;
  }
  const auto j = nlohmann::json::parse(text);
  std::uint64_t expect = 0;
  for (auto& k : order) {
    if (k == "__metadata__") {
      CHECK(j[k] == nlohmann::json{{"format", "pt"}});
      continue;
    }
    const auto& e = j[k];
    CHECK(e.size() == 3);
    const auto begin = e["data_offsets"][0].get<std::uint64_t>();
    const auto end = e["data_offsets"][1].get<std::uint64_t>();
    CHECK(begin == expect);
    const auto t = *io::dtype_from_name(e["dtype"].get<std::string>());
    CHECK((8 + n + begin) % io::dtype_size(t) == 0);  // every tensor aligned for its dtype
    CHECK(end - begin == f.at(k).data.size());
    CHECK(e["shape"].get<shape_t>() == f.at(k).shape);
    expect = end;
  }
  CHECK(8 + n + expect == bytes.size());
}

TEST_CASE("round trip: F32 and F64 are bitwise, F16 / BF16 round to nearest even", "[io][safetensors]") {
  temp_dir dir;
  rng g(5);
  tensor<float> a = randn<float>({4, 3}, g);
  a(0, 0) = std::numeric_limits<float>::infinity();
  a(0, 1) = -0.0f;
  a(0, 2) = std::numeric_limits<float>::denorm_min();
  a(1, 0) = std::numeric_limits<float>::quiet_NaN();
  tensor<double> b = randn<double>({2, 2, 2}, g);
  b(0, 0, 0) = 1e-310;  // subnormal double
  io::safetensors_file f;
  f.add("f32", a);
  f.add("f64", b);
  f.add("f16", a, dtype::F16);
  f.add("bf16", a, dtype::BF16);
  f.add("f64_from_float", a, dtype::F64);
  f.add("f32_from_double", b, dtype::F32);
  f.add("scalar", tensor<float>(3.5f));
  f.add("empty", zeros<float>({0, 7}));
  f.save(dir / "x.safetensors");
  CHECK(dir.files() == 1);  // no temporary left behind
  const auto r = io::safetensors_file::load(dir / "x.safetensors");
  CHECK(r.size() == 8);
  CHECK(r.at("f16").type == dtype::F16);
  CHECK(r.at("bf16").type == dtype::BF16);

  const auto a2 = r.get<float>("f32");
  REQUIRE(std::memcmp(a2.data(), a.data(), a.size() * 4) == 0);
  const auto b2 = r.get<double>("f64");
  REQUIRE(std::memcmp(b2.data(), b.data(), b.size() * 8) == 0);
  const auto a64 = r.get<double>("f64_from_float");
  const auto b32 = r.get<float>("f32_from_double");
  const auto h = r.get<float>("f16");
  const auto bf = r.get<double>("bf16");
  for (std::size_t i = 0; i < a.size(); ++i) {
    const float x = a.data()[i];
    if (std::isnan(x)) {
      CHECK(std::isnan(h.data()[i]));
      CHECK(std::isnan(bf.data()[i]));
      CHECK(std::isnan(a64.data()[i]));
      continue;
    }
    CHECK(a64.data()[i] == double(x));
    CHECK(h.data()[i] == peft::detail::half_to_float(peft::detail::float_to_half(x)));
    CHECK(bf.data()[i] == double(peft::detail::bf16_to_float(peft::detail::float_to_bf16(x))));
    if (std::isfinite(x)) CHECK(std::abs(h.data()[i] - x) <= std::abs(x) * 0x1p-11f + 0x1p-25f);  // half an ulp
  }
  for (std::size_t i = 0; i < b.size(); ++i) CHECK(b32.data()[i] == float(b.data()[i]));
  CHECK(r.get<float>("scalar").dimension() == 0);
  CHECK(r.get<float>("scalar")() == 3.5f);
  CHECK(shape_of(r.get<float>("empty")) == shape_t{0, 7});
}

TEST_CASE("integer, bool and 8-bit float tensors read back raw; ints convert to floats", "[io][safetensors]") {
  auto le = [](std::int64_t v, std::size_t n) {
    std::vector<std::uint8_t> b(n);
    for (std::size_t i = 0; i < n; ++i) b[i] = std::uint8_t(std::uint64_t(v) >> (8 * i));
    return b;
  };
  auto cat = [](std::initializer_list<std::vector<std::uint8_t>> parts) {
    std::vector<std::uint8_t> out;
    for (auto& p : parts) out.insert(out.end(), p.begin(), p.end());
    return out;
  };
  io::safetensors_file f;
  f.add("i8", dtype::I8, {2}, cat({le(-3, 1), le(127, 1)}));
  f.add("u8", dtype::U8, {2}, {0, 255});
  f.add("i16", dtype::I16, {2}, cat({le(-300, 2), le(32767, 2)}));
  f.add("u16", dtype::U16, {1}, le(65535, 2));
  f.add("i32", dtype::I32, {2}, cat({le(-70000, 4), le(5, 4)}));
  f.add("u32", dtype::U32, {1}, le(4000000000, 4));
  f.add("i64", dtype::I64, {2}, cat({le(-(std::int64_t(1) << 40), 8), le(9, 8)}));
  f.add("u64", dtype::U64, {1}, le(std::int64_t(1) << 53, 8));
  f.add("bool", dtype::BOOL, {3}, {1, 0, 1});
  f.add("bad_bool", dtype::BOOL, {2}, {1, 2});
  f.add("f8", dtype::F8_E4M3, {2}, {0x38, 0x40});
  const auto bytes = f.serialize();
  const auto r = io::safetensors_file::parse(bytes.data(), bytes.size(), "ints");
  for (auto& name : f.names()) {
    CHECK(r.at(name).type == f.at(name).type);
    CHECK(r.at(name).shape == f.at(name).shape);
    CHECK(r.at(name).data == f.at(name).data);
  }
  CHECK((r.get<double>("i8") == make_tensor<double>({2}, {-3, 127})));
  CHECK((r.get<double>("u8") == make_tensor<double>({2}, {0, 255})));
  CHECK((r.get<double>("i16") == make_tensor<double>({2}, {-300, 32767})));
  CHECK((r.get<double>("u16") == make_tensor<double>({1}, {65535})));
  CHECK((r.get<double>("i32") == make_tensor<double>({2}, {-70000, 5})));
  CHECK((r.get<double>("u32") == make_tensor<double>({1}, {4000000000.0})));
  CHECK((r.get<double>("i64") == make_tensor<double>({2}, {-1099511627776.0, 9})));
  CHECK((r.get<double>("u64") == make_tensor<double>({1}, {9007199254740992.0})));
  CHECK((r.get<float>("bool") == make_tensor<float>({3}, {1, 0, 1})));
  CHECK_THAT(thrown_message([&] { (void)r.get<float>("bad_bool"); }),
             Catch::Contains("'ints'") && Catch::Contains("bad_bool") && Catch::Contains("byte 2"));
  CHECK_THAT(thrown_message([&] { (void)r.get<float>("f8"); }),
             Catch::Contains("f8") && Catch::Contains("cannot convert F8_E4M3"));
  CHECK_THAT(thrown_message([&] { (void)r.get<float>("nope"); }), Catch::Contains("no tensor 'nope'"));
}

TEST_CASE("valid corpus files read, and reference-layout files re-serialize identically", "[io][safetensors]") {
  for (auto name : {"valid_tiny_f32.safetensors", "valid_empty.safetensors", "valid_mixed.safetensors",
                    "valid_conversions.safetensors"}) {
    INFO(name);
    const auto f = io::safetensors_file::load(corpus(name));
    CHECK(f.serialize() == read_bytes(corpus(name)));
  }
  const auto m = io::safetensors_file::load(corpus("valid_mixed.safetensors"));
  CHECK(m.metadata().at("format") == "pt");
  CHECK(m.metadata().at("note") == "quote \" backslash \\ tab \t");
  CHECK((m.get<float>("a.weight") == make_tensor<float>({2, 2}, {1.5f, -2.0f, 0.25f, 3.0f})));
  CHECK(m.get<double>("b.bias")(0) == 1e-300);
  CHECK(std::signbit(m.get<double>("b.bias")(1)));
  CHECK((m.get<float>("c.half") == make_tensor<float>({2}, {1.0f, -0.5f})));
  CHECK((m.get<float>("d.bf") == make_tensor<float>({2}, {1.0f, -2.0f})));
  CHECK((m.get<double>("e.idx") == make_tensor<double>({2}, {-7, 1099511627776.0})));
  CHECK(m.get<float>("g.scalar")() == 42.0f);
  CHECK(m.at("h.empty").shape == shape_t{0, 4});
  CHECK(m.get<float>("k.\u00e9\u4e2d")(0) == 7.0f);

  const auto u = io::safetensors_file::load(corpus("valid_unordered_unpadded.safetensors"));
  CHECK((u.get<float>("z") == make_tensor<float>({1}, {1.0f})));
  CHECK((u.get<float>("a") == make_tensor<float>({2}, {2.0f, 3.0f})));
  CHECK(u.metadata().at("k") == "v");
}

TEST_CASE("malformed files give an io_error naming the file and the problem", "[io][safetensors]") {
  // file -> phrases the message must contain
  const std::vector<std::pair<std::string, std::vector<std::string>>> cases = {
      {"bad_file_too_short", {"5 bytes", "too short"}},
      {"bad_header_size_exceeds_file", {"header size 200", "exceeds the 7 bytes"}},
      {"bad_header_size_over_limit", {"header size 100000001", "limit of 100000000"}},
      {"bad_header_size_max_u64", {"header size 18446744073709551615", "limit"}},
      {"bad_invalid_json", {"invalid JSON"}},
      {"bad_trailing_garbage", {"invalid JSON"}},
      {"bad_header_not_object", {"header is a JSON array, not an object"}},
      {"bad_non_utf8_name", {"not valid UTF-8", "byte 2"}},
      {"bad_overlong_utf8", {"not valid UTF-8"}},
      {"bad_duplicate_tensor", {"duplicate key 'a'"}},
      {"bad_duplicate_field", {"duplicate key 'dtype'"}},
      {"bad_unknown_dtype", {"tensor 'a'", "unknown dtype 'F33'"}},
      {"bad_dtype_not_string", {"tensor 'a'", "dtype is a JSON number"}},
      {"bad_unknown_field", {"tensor 'a'", "unknown field 'extra'"}},
      {"bad_missing_offsets", {"tensor 'a'", "missing field 'data_offsets'"}},
      {"bad_entry_not_object", {"tensor 'a'", "not an object"}},
      {"bad_negative_dim", {"tensor 'a'", "shape[0] = -1", "not a non-negative integer"}},
      {"bad_float_dim", {"tensor 'a'", "shape[0] = 2.0"}},
      {"bad_dim_beyond_u64", {"tensor 'a'", "shape[0]", "not a non-negative integer"}},
      {"bad_huge_dims", {"tensor 'a'", "[0,4000000000000]", "out of range of the 8-byte data buffer"}},
      {"bad_dims_product_overflow", {"tensor 'a'", "shape [1099511627776,1099511627776]", "overflows"}},
      {"bad_bytes_overflow", {"tensor 'a'", "shape [4611686018427387904] of F32 overflows"}},
      {"bad_zero_dim_overflow", {"tensor 'a'", "shape [0,1099511627776,1099511627776] of F32 overflows"}},
      {"bad_offsets_out_of_range", {"tensor 'a'", "[0,1000] out of range of the 8-byte data buffer"}},
      {"bad_offsets_overflow", {"tensor 'a'", "[18446744073709551608,18446744073709551615] out of range"}},
      {"bad_offsets_reversed", {"tensor 'a'", "[8,0] end before they begin"}},
      {"bad_offsets_arity", {"tensor 'a'", "data_offsets [0] is not [begin, end]"}},
      {"bad_byte_count_mismatch", {"tensor 'a'", "span 12 bytes", "shape [2,2] of F32 needs 16"}},
      {"bad_overlap", {"tensor 'b'", "[8,24] overlap tensor 'a' [0,16]"}},
      {"bad_gap", {"gap of 8 bytes", "before tensor 'b' [16,24]"}},
      {"bad_start_not_zero", {"gap of 4 bytes", "before tensor 'a'"}},
      {"bad_trailing_bytes", {"cover 8 bytes of the 12-byte data buffer", "4 trailing bytes"}},
      {"bad_metadata_non_string", {"__metadata__ value for key 'format' is a JSON number, not a string"}},
      {"bad_metadata_not_object", {"__metadata__ is a JSON string"}},
      {"bad_deep_nesting", {"nests deeper than 3"}},
      {"bad_truncated_data", {"tensor 'a'", "out of range of the 5-byte data buffer"}},
  };
  std::size_t bad_files = 0;
  for (auto& e : std::filesystem::directory_iterator(data_dir() + "/safetensors"))
    if (e.path().filename().string().rfind("bad_", 0) == 0) ++bad_files;
  CHECK(bad_files == cases.size());  // every committed bad file is listed here

  for (auto& [file, phrases] : cases) {
    const std::string path = corpus(file + ".safetensors");
    INFO(path);
    REQUIRE(std::filesystem::exists(path));
    const std::string from_file = thrown_message([&] { io::safetensors_file::load(path); });
    const auto bytes = read_bytes(path);
    const std::string from_memory =
        thrown_message([&] { io::safetensors_file::parse(bytes.data(), bytes.size(), "mem"); });
    INFO(from_file);
    INFO(from_memory);
    CHECK_THAT(from_file, Catch::StartsWith("peft::io_error: safetensors '" + path + "'"));
    CHECK_THAT(from_memory, Catch::StartsWith("peft::io_error: safetensors 'mem'"));
    for (auto& p : phrases) {
      CHECK_THAT(from_file, Catch::Contains(p));
      CHECK_THAT(from_memory, Catch::Contains(p));
    }
  }
}

TEST_CASE("every truncation and every single-byte corruption is an io_error or a valid file", "[io][safetensors]") {
  const auto bytes = read_bytes(corpus("valid_mixed.safetensors"));
  for (std::size_t n = 0; n < bytes.size(); ++n) {
    INFO("prefix " << n);
    CHECK_THROWS_AS(io::safetensors_file::parse(bytes.data(), n), io_error);
  }
  std::uint64_t hn = 0;
  std::memcpy(&hn, bytes.data(), 8);
  std::size_t ok = 0, failed = 0;
  for (std::size_t i = 0; i < 8 + hn; ++i)
    for (int v : {0x00, 0x22, 0x2c, 0x30, 0x39, 0x5b, 0x7b, 0x7d, 0x80, 0xff}) {
      auto b = bytes;
      if (b[i] == std::uint8_t(v)) continue;
      b[i] = std::uint8_t(v);
      try {
        const auto f = io::safetensors_file::parse(b.data(), b.size());
        for (auto& name : f.names()) {
          try {
            (void)f.get<double>(name);
          } catch (const io_error&) {
          }
        }
        ++ok;
      } catch (const io_error&) {
        ++failed;
      }  // anything else escapes and fails the test
    }
  CHECK(failed > 0);
  INFO("corruptions accepted: " << ok << ", rejected: " << failed);
  SUCCEED();
}

TEST_CASE("saving is atomic and reports unwritable paths", "[io][safetensors]") {
  temp_dir dir;
  io::safetensors_file f;
  f.add("w", ones<float>({2}));
  f.save(dir / "m.safetensors");
  io::safetensors_file f2;
  f2.add("w", full<float>({3}, 2.0f));
  f2.save(dir / "m.safetensors");  // replaces the old file
  CHECK((io::safetensors_file::load(dir / "m.safetensors").get<float>("w") == full<float>({3}, 2.0f)));
  CHECK(dir.files() == 1);
  const std::string bad = dir / "no_such_dir/m.safetensors";
  CHECK_THAT(thrown_message([&] { f.save(bad); }), Catch::Contains(bad) && Catch::Contains("cannot create"));
  CHECK(dir.files() == 1);
  CHECK_THAT(thrown_message([&] { io::safetensors_file::load(dir / "missing.safetensors"); }),
             Catch::Contains("missing.safetensors") && Catch::Contains("cannot read"));
}

TEST_CASE("building a file checks names, byte counts and dtypes", "[io][safetensors]") {
  io::safetensors_file f;
  f.add("a", ones<float>({2}));
  CHECK_THROWS_WITH(f.add("a", ones<float>({2})), Catch::Contains("duplicate tensor 'a'"));
  CHECK_THROWS_AS(f.add("__metadata__", ones<float>({2})), value_error);
  CHECK_THROWS_WITH(f.add("b", dtype::F32, {2, 2}, std::vector<std::uint8_t>(12)),
                    Catch::Contains("'b' has 12 bytes for shape [2,2] of F32"));
  CHECK_THROWS_WITH(f.add("c", ones<float>({2}), dtype::I32), Catch::Contains("cannot store tensor 'c' as I32"));
  CHECK_THROWS_AS(f.add(std::string("\xff"), ones<float>({1})), value_error);
  CHECK(f.size() == 1);
  CHECK(io::dtype_from_name("BF16") == dtype::BF16);
  CHECK(!io::dtype_from_name("bf16"));
  CHECK(io::dtype_size(dtype::F8_E5M2) == 1);
}

TEST_CASE("typed helpers save and load a map of tensors with metadata", "[io][safetensors]") {
  temp_dir dir;
  rng g(9);
  std::map<std::string, tensor<double>> sd{{"x.weight", randn<double>({3, 2}, g)}, {"x.bias", randn<double>({3}, g)}};
  io::save_safetensors(dir / "d.safetensors", sd, dtype::F64, {{"format", "pt"}});
  std::map<std::string, std::string> meta;
  const auto back = io::load_safetensors<double>(dir / "d.safetensors", &meta);
  CHECK((back == sd));
  CHECK(meta == std::map<std::string, std::string>{{"format", "pt"}});
  const auto as_float = io::load_safetensors<float>(dir / "d.safetensors");
  CHECK(as_float.at("x.bias")(1) == float(sd.at("x.bias")(1)));
}
