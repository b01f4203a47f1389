#pragma once
// The `peft` command-line tool: one `void register_<name>(CLI::App& app)` per subcommand, each
// defined in tools/peft/cmd_<name>.cpp and called by main.cpp. tools/CMakeLists.txt compiles
// every cmd_*.cpp present and defines PEFT_CLI_HAVE_<NAME> for each, so main.cpp registers
// exactly the subcommands that exist.
//
// Errors and exit codes, the same for every subcommand:
//   0  success
//   1  bad input or failed operation: a file is missing, malformed or does not fit; the message
//      on stderr is "peft <cmd>: <what is wrong>", naming the file
//   2  usage error: unknown flag, missing or malformed argument (CLI11's parse errors)
// Write a subcommand's callback body as  sub->callback([=] { peft_cli::run("merge", [&] { ... }); });
// run() prints any exception as above and throws CLI::RuntimeError(1), which main.cpp turns into
// exit code 1. peft_cli::fail("merge", "...") stops with a message of your own.
#include <exception>
#include <iostream>
#include <string>

#include <CLI/CLI.hpp>

void register_inspect(CLI::App& app);
void register_merge(CLI::App& app);
void register_combine(CLI::App& app);
void register_extract(CLI::App& app);
void register_convert(CLI::App& app);
void register_apply(CLI::App& app);

namespace peft_cli {

// Thrown by fail(); run() reports it like any other error.
struct failure : std::runtime_error {
  using std::runtime_error::runtime_error;
};

[[noreturn]] inline void fail(const std::string& /*cmd*/, const std::string& message) { throw failure(message); }

// The library's messages start with the exception kind ("peft::io_error: ..."); the tool's
// prefix "peft <cmd>: " replaces it.
inline std::string strip_kind(std::string m) {
  if (m.rfind("peft::", 0) == 0) {
    const auto colon = m.find(": ");
    if (colon != std::string::npos && colon < 40) m.erase(0, colon + 2);
  }
  return m;
}

template <class Body>
void run(const std::string& cmd, Body&& body) {
  try {
    body();
    return;
  } catch (const CLI::Error&) {
    throw;
  } catch (const std::exception& e) {
    std::cerr << "peft " << cmd << ": " << strip_kind(e.what()) << '\n';
  }
  throw CLI::RuntimeError(1);
}

}  // namespace peft_cli
