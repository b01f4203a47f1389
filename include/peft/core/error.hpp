#pragma once
// Exception types. Every user-facing check throws one of these with a message that
// names the operation and the shapes / values / path involved.
#include <cstddef>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace peft {

struct error : std::runtime_error {
  using std::runtime_error::runtime_error;
};
// Shapes of operands do not fit the operation: "peft::shape_error: matmul [4,8] x [6,3]".
struct shape_error : error {
  explicit shape_error(const std::string& what) : error("peft::shape_error: " + what) {}
};
// An argument has an invalid value (negative rank, probability outside [0,1), ...).
struct value_error : error {
  explicit value_error(const std::string& what) : error("peft::value_error: " + what) {}
};
// Reading or writing a file failed or the file is malformed; the message names the path.
struct io_error : error {
  explicit io_error(const std::string& what) : error("peft::io_error: " + what) {}
};

template <class Shape>
std::string shape_str(const Shape& s) {
  std::ostringstream os;
  os << '[';
  bool first = true;
  for (auto d : s) {
    if (!first) os << ',';
    os << d;
    first = false;
  }
  os << ']';
  return os.str();
}

}  // namespace peft
