// libFuzzer target: the GGUF reader on arbitrary bytes. Any input must either parse or throw
// peft::io_error (anything else escapes and is reported as a crash). A file that parses must
// convert tensor by tensor (or fail with io_error for types that do not convert), re-serialize
// to a file that parses back to the same tensors, and that canonical form must be a fixpoint
// (serialize . parse . serialize == serialize; compared as bytes so NaN metadata is fine). The
// llama mapping is exercised too: reading a config or a model from a parsed file may only fail
// with io_error.
#include <cstdint>
#include <cstdlib>

#include "peft/io/gguf.hpp"
#include "peft/io/gguf_llama.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using peft::io::gguf_file;
  gguf_file f;
  try {
    f = gguf_file::parse(data, size, "fuzz");
  } catch (const peft::io_error&) {
    return 0;
  }
  for (const auto& [name, t] : f.tensors()) {
    try {
      (void)f.get_tensor<float>(name);
      (void)f.get_tensor<double>(name);
    } catch (const peft::io_error&) {
    }
  }
  const auto bytes = f.serialize();
  const auto g = gguf_file::parse(bytes.data(), bytes.size(), "reserialized");
  if (g.tensor_names() != f.tensor_names() || g.metadata().size() != f.metadata().size()) std::abort();
  for (const auto& [name, t] : f.tensors()) {
    const auto& u = g.tensor_at(name);
    if (u.type != t.type || u.ne != t.ne || u.data != t.data) std::abort();
  }
  if (g.serialize() != bytes) std::abort();

  // Small configs only: a fuzzed header must not make the model constructor allocate gigabytes.
  try {
    const auto c = peft::io::gguf_llama_config(f);
    if (c.vocab * c.dim + c.n_layers * (4 * c.dim * c.dim + 3 * c.dim * c.hidden_dim) < (1u << 20) &&
        c.n_layers < 64 && c.max_seq <= 4096)
      (void)peft::io::llama_from_gguf<float>(f);
  } catch (const peft::io_error&) {
  }
  return 0;
}
