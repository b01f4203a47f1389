// libFuzzer target: the adapter_config.json reader on arbitrary bytes. Any input must either
// parse or throw peft::io_error; a config that parses must dump, and the dump must parse back
// and dump to the same text.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "peft/io/adapter_config.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using peft::io::adapter_config;
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  adapter_config c;
  try {
    c = adapter_config::parse(text, "fuzz");
  } catch (const peft::io_error&) {
    return 0;
  }
  const std::string s = c.dump();
  const auto c2 = adapter_config::parse(s, "redumped");
  if (c2.dump() != s) std::abort();
  return 0;
}
