#pragma once
// IEEE binary16 (F16) and bfloat16 (BF16) encoding and decoding on raw 16-bit patterns, for
// file formats (safetensors, GGUF). Encoding rounds to nearest, ties to even, straight from
// binary64: a double is rounded once (double -> float -> half could round twice). Overflow
// gives ±inf, values below half the smallest subnormal give ±0, NaN stays NaN (quiet, sign and
// the top payload bits kept). Decoding is exact.
#include <bit>
#include <cstdint>
#include <cstring>

namespace peft::detail {

// Rounds x to a binary format with E exponent bits and M stored mantissa bits (1 + E + M = 16)
// and returns its bit pattern.
template <int E, int M>
constexpr std::uint16_t encode_small_float(double x) {
  static_assert(1 + E + M == 16 && M >= 1 && M < 52);
  constexpr int bias = (1 << (E - 1)) - 1;
  constexpr int max_biased = (1 << E) - 1;  // all ones: inf / NaN
  const std::uint64_t b = std::bit_cast<std::uint64_t>(x);
  const auto sign = std::uint16_t((b >> 63) << 15);
  const int exp = int((b >> 52) & 0x7ff);
  const std::uint64_t man = b & ((std::uint64_t(1) << 52) - 1);
  if (exp == 0x7ff) {
    if (man == 0) return std::uint16_t(sign | (max_biased << M));
    // NaN: force the quiet bit so a payload truncated to zero cannot turn into inf.
    const auto payload = std::uint16_t(man >> (52 - M));
    return std::uint16_t(sign | (max_biased << M) | (1 << (M - 1)) | payload);
  }
  if (exp == 0) return sign;  // ±0 and double subnormals (far below any 16-bit subnormal)
  int te = exp - 1023 + bias;  // biased exponent in the target format
  const std::uint64_t sig = man | (std::uint64_t(1) << 52);  // 53 significant bits
  // Keep M fraction bits (+ the implicit one) for normals; subnormals lose (1 - te) more.
  const int shift = te >= 1 ? 52 - M : 52 - M + (1 - te);
  if (shift > 63) return sign;  // below a quarter of the smallest subnormal: rounds to 0
  std::uint64_t q = sig >> shift;
  const std::uint64_t rem = sig & ((std::uint64_t(1) << shift) - 1);
  const std::uint64_t half = std::uint64_t(1) << (shift - 1);
  if (rem > half || (rem == half && (q & 1))) ++q;
  if (te >= 1) {
    if (q >> (M + 1)) {  // the mantissa rounded up to the next power of two
      q >>= 1;
      ++te;
    }
    if (te >= max_biased) return std::uint16_t(sign | (max_biased << M));
    return std::uint16_t(sign | (te << M) | (q & ((1u << M) - 1)));
  }
  // Subnormal result; q == 2^M (rounded up into the smallest normal) encodes correctly as is.
  return std::uint16_t(sign | q);
}

// Exact value of a pattern with E exponent and M mantissa bits, as a float. Only for E <= 5,
// where every subnormal of the small format is a normal float (not so for bfloat16).
template <int E, int M>
inline float decode_small_float(std::uint16_t h) {
  static_assert(1 + E + M == 16 && E <= 5);
  constexpr int bias = (1 << (E - 1)) - 1;
  constexpr int max_biased = (1 << E) - 1;
  const std::uint32_t sign = std::uint32_t(h >> 15) << 31;
  const int exp = (h >> M) & max_biased;
  const std::uint32_t man = h & ((1u << M) - 1);
  std::uint32_t bits;
  if (exp == max_biased) {
    bits = sign | 0x7f800000u | (man << (23 - M));  // inf, or NaN with its payload
  } else if (exp == 0) {
    if (man == 0) {
      bits = sign;
    } else {
      // Subnormal: normalise.
      int e = 1 - bias;
      std::uint32_t m = man;
      while (!(m & (1u << M))) {
        m <<= 1;
        --e;
      }
      bits = sign | std::uint32_t(e + 127) << 23 | ((m & ((1u << M) - 1)) << (23 - M));
    }
  } else {
    bits = sign | std::uint32_t(exp - bias + 127) << 23 | (man << (23 - M));
  }
  return std::bit_cast<float>(bits);
}

constexpr std::uint16_t double_to_half(double x) { return encode_small_float<5, 10>(x); }
constexpr std::uint16_t float_to_half(float x) { return encode_small_float<5, 10>(double(x)); }
inline float half_to_float(std::uint16_t h) { return decode_small_float<5, 10>(h); }

constexpr std::uint16_t double_to_bf16(double x) { return encode_small_float<8, 7>(x); }
constexpr std::uint16_t float_to_bf16(float x) { return encode_small_float<8, 7>(double(x)); }
// bfloat16 is the top half of a float.
inline float bf16_to_float(std::uint16_t h) {
  return std::bit_cast<float>(std::uint32_t(h) << 16);
}

}  // namespace peft::detail
