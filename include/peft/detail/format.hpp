#pragma once
// Small text helpers shared by reports (trainable-parameter summaries, the examples' tables).
#include <cstddef>
#include <string>

namespace peft::detail {

// 1234567 -> "1,234,567". Appends instead of inserting into the string (GCC 12's -Wrestrict
// misfires on std::string::insert at -O2).
inline std::string group_digits(std::size_t n) {
  const std::string d = std::to_string(n);
  std::string s;
  s.reserve(d.size() + d.size() / 3);
  for (std::size_t i = 0; i < d.size(); ++i) {
    if (i > 0 && (d.size() - i) % 3 == 0) s.push_back(',');
    s.push_back(d[i]);
  }
  return s;
}

}  // namespace peft::detail
