// libFuzzer target: the safetensors reader on arbitrary bytes. Any input must either parse or
// throw peft::io_error (anything else escapes and is reported as a crash); a file that parses
// must convert tensor by tensor (or fail with io_error), re-serialize, parse back to the same
// contents, and re-serialize to the same bytes.
#include <cstdint>
#include <cstdlib>

#include "peft/io/safetensors.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using peft::io::safetensors_file;
  safetensors_file f;
  try {
    f = safetensors_file::parse(data, size, "fuzz");
  } catch (const peft::io_error&) {
    return 0;
  }
  for (const auto& name : f.names()) {
    try {
      (void)f.get<float>(name);
      (void)f.get<double>(name);
    } catch (const peft::io_error&) {
    }
  }
  const auto bytes = f.serialize();
  const auto g = safetensors_file::parse(bytes.data(), bytes.size(), "reserialized");
  if (g.metadata() != f.metadata() || g.names() != f.names()) std::abort();
  for (const auto& [name, e] : f.entries()) {
    const auto& e2 = g.at(name);
    if (e2.type != e.type || e2.shape != e.shape || e2.data != e.data) std::abort();
  }
  if (g.serialize() != bytes) std::abort();
  return 0;
}
