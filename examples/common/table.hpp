#pragma once
// An aligned text table for example reports, also written as CSV (RFC 4180 quoting) and as a
// GitHub Markdown table. Numeric-looking columns are right-aligned.
#include <algorithm>
#include <cctype>
#include <cstring>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "peft/detail/format.hpp"

namespace examples {

class table {
 public:
  explicit table(std::vector<std::string> headers) : headers_(std::move(headers)) {}

  void add_row(std::vector<std::string> row) {
    if (row.size() != headers_.size())
      throw std::invalid_argument("table: row has " + std::to_string(row.size()) +
                                  " cells, the table has " + std::to_string(headers_.size()) +
                                  " columns");
    rows_.push_back(std::move(row));
  }
  std::size_t rows() const { return rows_.size(); }
  std::size_t columns() const { return headers_.size(); }

  // Aligned plain text: a header line, a rule, one line per row.
  std::string to_text() const {
    const auto w = widths();
    std::ostringstream os;
    auto line = [&](const std::vector<std::string>& cells) {
      for (std::size_t c = 0; c < cells.size(); ++c) {
        const std::size_t pad = w[c] - cells[c].size();
        const bool right = right_aligned(c);  // headers follow their column
        if (c) os << "  ";
        if (right) os << std::string(pad, ' ');
        os << cells[c];
        if (!right && c + 1 < cells.size()) os << std::string(pad, ' ');
      }
      os << '\n';
    };
    bool headed = false;
    for (auto& h : headers_) headed = headed || !h.empty();
    if (headed) {  // all-empty headers: a borderless key/value listing
      line(headers_);
      std::size_t total = 0;
      for (auto x : w) total += x;
      os << std::string(total + 2 * (w.size() - 1), '-') << '\n';
    }
    for (auto& r : rows_) line(r);
    return os.str();
  }

  std::string to_csv() const {
    std::ostringstream os;
    auto line = [&](const std::vector<std::string>& cells) {
      for (std::size_t c = 0; c < cells.size(); ++c) os << (c ? "," : "") << csv_cell(cells[c]);
      os << '\n';
    };
    line(headers_);
    for (auto& r : rows_) line(r);
    return os.str();
  }

  std::string to_markdown() const {
    std::ostringstream os;
    os << '|';
    for (auto& h : headers_) os << ' ' << md_cell(h) << " |";
    os << "\n|";
    for (std::size_t c = 0; c < headers_.size(); ++c) os << (right_aligned(c) ? "---:|" : "---|");
    os << '\n';
    for (auto& r : rows_) {
      os << '|';
      for (auto& cell : r) os << ' ' << md_cell(cell) << " |";
      os << '\n';
    }
    return os.str();
  }

  void print(std::FILE* f = stdout) const {
    std::fputs(to_text().c_str(), f);
    std::fflush(f);
  }

  // Writes text to path; throws naming the path on failure.
  static void write_file(const std::string& path, const std::string& text) {
    std::ofstream out(path, std::ios::binary);
    if (!out) throw std::runtime_error("cannot write '" + path + "'");
    out << text;
    if (!out) throw std::runtime_error("error writing '" + path + "'");
  }

  static std::string csv_cell(const std::string& s) {
    if (s.find_first_of(",\"\n\r") == std::string::npos) return s;
    std::string q = "\"";
    for (char ch : s) q += ch == '"' ? std::string("\"\"") : std::string(1, ch);
    return q + "\"";
  }

 private:
  static bool numeric(const std::string& s) {
    if (s.empty()) return false;
    bool digit = false;
    for (char ch : s) {
      if (std::isdigit(static_cast<unsigned char>(ch))) digit = true;
      else if (!std::strchr("+-.,%eE xkKMGiBs:", ch)) return false;
    }
    return digit;
  }
  bool right_aligned(std::size_t c) const {
    if (rows_.empty()) return false;
    for (auto& r : rows_)
      if (!r[c].empty() && r[c] != "-" && !numeric(r[c])) return false;
    return true;
  }
  std::vector<std::size_t> widths() const {
    std::vector<std::size_t> w(headers_.size());
    for (std::size_t c = 0; c < w.size(); ++c) w[c] = headers_[c].size();
    for (auto& r : rows_)
      for (std::size_t c = 0; c < w.size(); ++c) w[c] = std::max(w[c], r[c].size());
    return w;
  }
  static std::string md_cell(const std::string& s) {
    std::string o;
    for (char ch : s) o += ch == '|' ? std::string("\\|") : std::string(1, ch);
    return o;
  }

  std::vector<std::string> headers_;
  std::vector<std::vector<std::string>> rows_;
};

// printf into a std::string, for table cells.
template <class... Args>
std::string fmt(const char* f, Args... args) {
  char buf[128];
  std::snprintf(buf, sizeof buf, f, args...);
  return buf;
}

// 1234567 -> "1,234,567"
inline std::string group_digits(std::size_t n) { return peft::detail::group_digits(n); }

}  // namespace examples
