// peft: inspect, merge, combine, extract, convert and run parameter-efficient fine-tuning
// adapters from the command line. Each subcommand lives in cmd_<name>.cpp (see commands.hpp for
// the error and exit-code conventions).
#include <exception>
#include <iostream>
#include <string>

#include <CLI/CLI.hpp>

#include "commands.hpp"
#include "peft/version.hpp"

int main(int argc, char** argv) {
  CLI::App app{"peft: inspect, merge, combine, extract, convert and run parameter-efficient fine-tuning "
               "adapters (Hugging Face PEFT directories, safetensors, GGUF, .npy).\n"
               "Exit codes: 0 success, 1 bad input (the message names the file), 2 usage error.",
               "peft"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::to_string(PEFT_VERSION_MAJOR) + "." + std::to_string(PEFT_VERSION_MINOR) +
                                        "." + std::to_string(PEFT_VERSION_PATCH));
  // Usage errors name the subcommand when one was given: "peft merge: --base is required".
  app.failure_message([](const CLI::App* a, const CLI::Error& e) {
    std::string who = "peft";
    const auto subs = a->get_subcommands();
    if (!subs.empty()) who += " " + subs.front()->get_name();
    return who + ": " + e.what() + "\nRun '" + who + " --help' for usage.\n";
  });

#ifdef PEFT_CLI_HAVE_INSPECT
  register_inspect(app);
#endif
#ifdef PEFT_CLI_HAVE_MERGE
  register_merge(app);
#endif
#ifdef PEFT_CLI_HAVE_COMBINE
  register_combine(app);
#endif
#ifdef PEFT_CLI_HAVE_EXTRACT
  register_extract(app);
#endif
#ifdef PEFT_CLI_HAVE_CONVERT
  register_convert(app);
#endif
#ifdef PEFT_CLI_HAVE_APPLY
  register_apply(app);
#endif

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // RuntimeError: a subcommand failed and has reported it (peft_cli::run).
    if (e.get_name() == "RuntimeError") return e.get_exit_code();
    // --help / --version exit 0; every other parse error is a usage error.
    return app.exit(e) == 0 ? 0 : 2;
  } catch (const std::exception& e) {
    std::cerr << "peft: " << e.what() << '\n';
    return 1;
  }
  return 0;
}
