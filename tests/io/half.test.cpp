#include <catch2/catch.hpp>

#include <bit>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <limits>

#include "peft/core/random.hpp"
#include "peft/detail/half.hpp"
#include "peft/io/safetensors.hpp"

// Tests of include/peft/detail/half.hpp (F16 / BF16 conversions used by peft/io).
using namespace peft;
using peft::detail::bf16_to_float;
using peft::detail::double_to_bf16;
using peft::detail::double_to_half;
using peft::detail::float_to_bf16;
using peft::detail::float_to_half;
using peft::detail::half_to_float;

namespace {
std::string data_dir() { return (std::filesystem::path(__FILE__).parent_path() / "data").string(); }
std::uint32_t bits(float f) { return std::bit_cast<std::uint32_t>(f); }

// bfloat16 by the usual integer trick on the float bits (a different algorithm from ours).
std::uint16_t bf16_reference(float f) {
  const std::uint32_t u = bits(f);
  if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x7fffffu)) return std::uint16_t((u >> 16) | 0x40);
  return std::uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
}  // namespace

TEST_CASE("F16 encodes hand-computed values with round to nearest even", "[io][half]") {
  CHECK(float_to_half(0.0f) == 0x0000);
  CHECK(float_to_half(-0.0f) == 0x8000);
  CHECK(float_to_half(1.0f) == 0x3c00);
  CHECK(float_to_half(-2.0f) == 0xc000);
  CHECK(float_to_half(65504.0f) == 0x7bff);                   // largest finite
  CHECK(float_to_half(65519.0f) == 0x7bff);                   // below the midpoint to 65536
  CHECK(float_to_half(65520.0f) == 0x7c00);                   // the midpoint rounds (to even) to inf
  CHECK(float_to_half(1e10f) == 0x7c00);
  CHECK(float_to_half(-1e10f) == 0xfc00);
  CHECK(float_to_half(std::numeric_limits<float>::infinity()) == 0x7c00);
  CHECK(float_to_half(0x1p-14f) == 0x0400);                   // smallest normal
  CHECK(float_to_half(0x1p-24f) == 0x0001);                   // smallest subnormal
  CHECK(float_to_half(0x1p-25f) == 0x0000);                   // half of it: tie to even -> 0
  CHECK(float_to_half(0x1.8p-25f) == 0x0001);                 // above the tie -> up
  CHECK(float_to_half(0x1.8p-24f) == 0x0002);                 // 1.5 subnormal ulps: tie -> even (2)
  CHECK(float_to_half(0x1.ff8p-15f) == 0x03ff);               // largest subnormal
  CHECK(float_to_half(0x1.ffcp-15f) == 0x0400);               // tie -> even: the smallest normal
  CHECK(float_to_half(1.0f + 0x1p-11f) == 0x3c00);            // tie -> even
  CHECK(float_to_half(1.0f + 0x1.8p-10f) == 0x3c02);          // 1 + 3·2^-11: tie -> even (up)
  CHECK(float_to_half(1.0f + 0x1p-11f + 0x1p-20f) == 0x3c01); // above the tie
  CHECK(float_to_half(2047.0f + 0.5f) == 0x6800);             // 2047.5 -> 2048 (mantissa carry)
  const auto nan = float_to_half(std::numeric_limits<float>::quiet_NaN());
  CHECK((nan & 0x7c00) == 0x7c00);
  CHECK((nan & 0x03ff) != 0);
  CHECK(float_to_half(-std::numeric_limits<float>::quiet_NaN()) == (nan | 0x8000));
  // A signalling NaN whose payload lives only in the low bits must not become inf.
  CHECK((float_to_half(std::bit_cast<float>(0x7f800001u)) & 0x03ff) != 0);
}

TEST_CASE("F16 rounds a double once, not through float", "[io][half]") {
  // d is just above the F16 midpoint 1 + 2^-11; as a float it is exactly the midpoint, which
  // would then round to even (1.0).
  const double d = 1.0 + 0x1p-11 + 0x1p-40;
  REQUIRE(double(float(d)) == 1.0 + 0x1p-11);
  CHECK(double_to_half(d) == 0x3c01);
  CHECK(float_to_half(float(d)) == 0x3c00);
  CHECK(double_to_bf16(1.0 + 0x1p-8 + 0x1p-40) == 0x3f81);
  CHECK(double_to_half(1e-300) == 0x0000);
  CHECK(double_to_half(-std::numeric_limits<double>::denorm_min()) == 0x8000);
  CHECK(double_to_half(1e300) == 0x7c00);
}

TEST_CASE("F16 decodes every pattern exactly and re-encodes it", "[io][half]") {
  for (std::uint32_t h = 0; h < 0x10000; ++h) {
    const float f = half_to_float(std::uint16_t(h));
    const bool is_nan = (h & 0x7c00) == 0x7c00 && (h & 0x3ff);
    if (is_nan) {
      REQUIRE(std::isnan(f));
      REQUIRE((float_to_half(f) & 0x8000) == (h & 0x8000));
      continue;
    }
    // value = (-1)^s · m · 2^(e-25) for e > 0 (m with the implicit bit), m · 2^-24 for e = 0.
    const int e = int(h >> 10) & 0x1f;
    const int m = int(h & 0x3ff);
    double want = e == 0 ? std::ldexp(m, -24) : e == 31 ? HUGE_VAL : std::ldexp(m + 1024, e - 25);
    if (h & 0x8000) want = -want;
    REQUIRE(double(f) == want);
    REQUIRE(float_to_half(f) == h);
    REQUIRE(double_to_half(double(f)) == h);
  }
}

#ifdef __FLT16_MAX__
TEST_CASE("F16 agrees with the compiler's _Float16 conversions", "[io][half]") {
  for (std::uint32_t h = 0; h < 0x10000; ++h) {
    const _Float16 x = std::bit_cast<_Float16>(std::uint16_t(h));
    const float f = half_to_float(std::uint16_t(h));
    if (std::isnan(f)) continue;
    REQUIRE(bits(f) == bits(float(x)));
  }
  rng g(7);
  for (int i = 0; i < 2000000; ++i) {
    // Random float bit patterns concentrated on F16's range, plus fully random ones.
    std::uint32_t u = std::uint32_t(g.next_u64());
    if (i % 2) u = (u & 0x80ffffffu) | (std::uint32_t(0x60 + g.uniform_int(0x30)) << 23);
    const float f = std::bit_cast<float>(u);
    if (std::isnan(f)) continue;
    const auto want = std::bit_cast<std::uint16_t>(static_cast<_Float16>(f));
    REQUIRE(float_to_half(f) == want);
    // doubles between floats: a single rounding, as _Float16's conversion from double
    const double d = double(f) * (1.0 + 0x1p-30 * double(int(g.uniform_int(64)) - 32));
    REQUIRE(double_to_half(d) == std::bit_cast<std::uint16_t>(static_cast<_Float16>(d)));
  }
}
#endif

TEST_CASE("BF16 encodes hand-computed values with round to nearest even", "[io][half]") {
  CHECK(float_to_bf16(1.0f) == 0x3f80);
  CHECK(float_to_bf16(-2.0f) == 0xc000);
  CHECK(float_to_bf16(1.0f + 0x1p-8f) == 0x3f80);             // tie -> even
  CHECK(float_to_bf16(1.0f + 0x1.8p-7f) == 0x3f82);           // 1 + 3·2^-8: tie -> even (up)
  CHECK(float_to_bf16(1.0f + 0x1p-8f + 0x1p-20f) == 0x3f81);
  CHECK(float_to_bf16(std::numeric_limits<float>::max()) == 0x7f80);  // rounds to inf
  CHECK(float_to_bf16(0x1.fep127f) == 0x7f7f);                // largest finite BF16
  CHECK(float_to_bf16(0x1p-133f) == 0x0001);                  // smallest subnormal
  CHECK(float_to_bf16(0x1p-134f) == 0x0000);                  // tie -> even
  CHECK(float_to_bf16(std::numeric_limits<float>::denorm_min()) == 0x0000);
  CHECK(float_to_bf16(-0.0f) == 0x8000);
  CHECK(float_to_bf16(-std::numeric_limits<float>::infinity()) == 0xff80);
  const auto nan = float_to_bf16(std::numeric_limits<float>::quiet_NaN());
  CHECK((nan & 0x7f80) == 0x7f80);
  CHECK((nan & 0x7f) != 0);
  CHECK((float_to_bf16(std::bit_cast<float>(0x7f800001u)) & 0x7f) != 0);  // never inf
  CHECK(bf16_to_float(0x0001) == 0x1p-133f);
  CHECK(bf16_to_float(0x3f80) == 1.0f);
}

TEST_CASE("BF16 matches an independent rounding on random floats and round-trips every pattern",
          "[io][half]") {
  for (std::uint32_t h = 0; h < 0x10000; ++h) {
    const float f = bf16_to_float(std::uint16_t(h));
    if (std::isnan(f)) continue;
    REQUIRE(bits(f) == h << 16);
    REQUIRE(float_to_bf16(f) == h);
  }
  rng g(3);
  for (int i = 0; i < 2000000; ++i) {
    const float f = std::bit_cast<float>(std::uint32_t(g.next_u64()));
    if (std::isnan(f)) continue;
    REQUIRE(float_to_bf16(f) == bf16_reference(f));
  }
}

TEST_CASE("F16 and BF16 encodings match the committed Python references", "[io][half]") {
  // tests/io/data/make_corpus.py wrote F16 with struct 'e' (IEEE binary16, round half to even,
  // straight from the double) and BF16 by rounding float32 bits.
  const auto f = io::safetensors_file::load(data_dir() + "/safetensors/valid_conversions.safetensors");
  const auto& src64 = f.at("src_f64");
  const auto& src32 = f.at("src_f32");
  const auto& f16 = f.at("f16_from_f64");
  const auto& bf = f.at("bf16_from_f32");
  const std::size_t n = src64.shape.at(0);
  REQUIRE(n > 20);
  for (std::size_t i = 0; i < n; ++i) {
    double d;
    float s;
    std::memcpy(&d, src64.data.data() + 8 * i, 8);
    std::memcpy(&s, src32.data.data() + 4 * i, 4);
    const auto want16 = std::uint16_t(f16.data[2 * i] | f16.data[2 * i + 1] << 8);
    const auto wantbf = std::uint16_t(bf.data[2 * i] | bf.data[2 * i + 1] << 8);
    INFO("value " << i << ": " << d);
    CHECK(double_to_half(d) == want16);
    CHECK(float_to_bf16(s) == wantbf);
  }
}
