#pragma once
// The message of the exception f throws, for tests that check what an error names.
#include <exception>
#include <functional>
#include <string>

#include "peft/core/error.hpp"

namespace peft::test {

// E's what(); another exception's what() marked as such (so a Contains check fails on it);
// "<no error>" when nothing is thrown.
template <class E = peft::error>
std::string thrown_message(const std::function<void()>& f) {
  try {
    f();
  } catch (const E& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("<not the expected exception type> ") + e.what();
  }
  return "<no error>";
}

}  // namespace peft::test
