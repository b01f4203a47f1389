// libFuzzer target: the .npy reader on arbitrary bytes. Any input must either parse or throw
// peft::io_error (anything else escapes and is reported as a crash). An array that parses must
// decode to float and double, serialize to numpy's canonical layout, parse back to the same
// dtype, shape and bytes, and that canonical form must be a fixpoint.
#include <cstdint>
#include <cstdlib>

#include "peft/io/npy.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  peft::io::npy_array a;
  try {
    a = peft::io::parse_npy(data, size, "fuzz");
  } catch (const peft::io_error&) {
    return 0;
  }
  // Decoding allocates prod(shape) elements, which the exact data-length check bounds by the
  // input size (an empty array can have huge dims but no elements).
  const auto f = peft::io::npy_to_tensor<float>(a);
  const auto d = peft::io::npy_to_tensor<double>(a);
  if (f.size() != d.size() || f.size() * peft::io::npy_dtype_size(a.dtype) != a.data.size()) std::abort();
  const auto bytes = peft::io::serialize_npy(a);
  if ((bytes.size() - a.data.size()) % 64 != 0) std::abort();
  const auto b = peft::io::parse_npy(bytes.data(), bytes.size(), "reserialized");
  if (b.dtype != a.dtype || b.shape != a.shape || b.data != a.data) std::abort();
  if (peft::io::serialize_npy(b) != bytes) std::abort();
  return 0;
}
