// Tests of the examples' shared helpers that need no dataset: the IDX reader (Fashion-MNIST's
// format) and the report table. (The example programs themselves run as ctest smoke tests,
// registered in examples/CMakeLists.txt.)
#include <catch2/catch.hpp>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "../../examples/common/idx.hpp"
#include "../../examples/common/table.hpp"

using namespace examples;

namespace {
std::vector<std::uint8_t> be32(std::uint32_t v) {
  return {std::uint8_t(v >> 24), std::uint8_t(v >> 16), std::uint8_t(v >> 8), std::uint8_t(v)};
}
std::vector<std::uint8_t> idx_images(std::uint32_t n, std::uint32_t rows, std::uint32_t cols,
                                     std::size_t data_bytes) {
  std::vector<std::uint8_t> b;
  for (auto v : {0x00000803u, n, rows, cols}) {
    auto w = be32(v);
    b.insert(b.end(), w.begin(), w.end());
  }
  for (std::size_t i = 0; i < data_bytes; ++i) b.push_back(std::uint8_t(i * 7));
  return b;
}
std::string error_of(const std::vector<std::uint8_t>& buf, std::uint32_t magic, std::size_t max = 0) {
  try {
    read_idx_buffer(buf, magic, "file.gz", max);
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  return "";
}
}  // namespace

TEST_CASE("read_idx: reads an image file's dims and bytes", "[examples][idx]") {
  const auto buf = idx_images(3, 2, 4, 3 * 2 * 4);
  const auto d = read_idx_buffer(buf, 0x803, "images");
  REQUIRE(d.dims == std::vector<std::uint32_t>{3, 2, 4});
  REQUIRE(d.item_size() == 8);
  REQUIRE(d.bytes.size() == 24);
  CHECK(d.bytes[0] == 0);
  CHECK(d.bytes[23] == std::uint8_t(23 * 7));
}

TEST_CASE("read_idx: max_items stops early and reports the items read", "[examples][idx]") {
  const auto d = read_idx_buffer(idx_images(3, 2, 4, 24), 0x803, "images", 2);
  REQUIRE(d.dims == std::vector<std::uint32_t>{2, 2, 4});
  REQUIRE(d.bytes.size() == 16);
  CHECK(d.bytes[15] == std::uint8_t(15 * 7));
}

TEST_CASE("read_idx: reads a label file", "[examples][idx]") {
  std::vector<std::uint8_t> b = be32(0x801);
  auto n = be32(4);
  b.insert(b.end(), n.begin(), n.end());
  for (std::uint8_t v : {9, 0, 3, 5}) b.push_back(v);
  const auto d = read_idx_buffer(b, 0x801, "labels");
  REQUIRE(d.dims == std::vector<std::uint32_t>{4});
  CHECK(d.bytes == std::vector<std::uint8_t>{9, 0, 3, 5});
}

TEST_CASE("read_idx: bad input names the file and the problem", "[examples][idx]") {
  SECTION("wrong magic (a label file read as images)") {
    std::vector<std::uint8_t> b = be32(0x801);
    auto n = be32(1);
    b.insert(b.end(), n.begin(), n.end());
    b.push_back(1);
    const auto e = error_of(b, 0x803);
    CHECK_THAT(e, Catch::Contains("file.gz") && Catch::Contains("0x00000801") &&
                      Catch::Contains("0x00000803"));
  }
  SECTION("truncated header") {
    CHECK_THAT(error_of({0, 0, 8}, 0x803), Catch::Contains("truncated IDX header"));
  }
  SECTION("zero dimension") {
    CHECK_THAT(error_of(idx_images(3, 0, 4, 0), 0x803), Catch::Contains("dimension 1 = 0"));
  }
  SECTION("truncated data") {
    CHECK_THAT(error_of(idx_images(3, 2, 4, 20), 0x803),
               Catch::Contains("truncated") && Catch::Contains("20 of 24 bytes"));
  }
  SECTION("but a short file is fine when only its first items are read") {
    CHECK(error_of(idx_images(3, 2, 4, 16), 0x803, 2).empty());
  }
}

TEST_CASE("table: aligned text, CSV and Markdown", "[examples][table]") {
  table t({"method", "params", "acc"});
  t.add_row({"lora", "7,493", "94.10%"});
  t.add_row({"full, all", "269,829", "95.02%"});
  const std::string text = t.to_text();
  // Text columns left-aligned, numeric columns (and their headers) right-aligned, two spaces
  // between columns, no trailing blanks.
  CHECK(text ==
        "method      params     acc\n"
        "--------------------------\n"
        "lora         7,493  94.10%\n"
        "full, all  269,829  95.02%\n");
  CHECK(t.to_csv() == "method,params,acc\nlora,\"7,493\",94.10%\n\"full, all\",\"269,829\",95.02%\n");
  CHECK(t.to_markdown() ==
        "| method | params | acc |\n|---|---:|---:|\n| lora | 7,493 | 94.10% |\n"
        "| full, all | 269,829 | 95.02% |\n");
}

TEST_CASE("table: rows must match the header", "[examples][table]") {
  table t({"a", "b"});
  CHECK_THROWS_WITH(t.add_row({"1"}), Catch::Contains("1 cells") && Catch::Contains("2 columns"));
}

TEST_CASE("table: CSV quoting doubles quotes", "[examples][table]") {
  CHECK(table::csv_cell("say \"hi\"") == "\"say \"\"hi\"\"\"");
  CHECK(table::csv_cell("plain") == "plain");
}

TEST_CASE("group_digits", "[examples][table]") {
  CHECK(group_digits(0) == "0");
  CHECK(group_digits(999) == "999");
  CHECK(group_digits(1000) == "1,000");
  CHECK(group_digits(1234567) == "1,234,567");
}
