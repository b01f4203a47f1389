#pragma once
// Optimizer-state memory of a model under several optimizers, computed from the parameter shapes
// alone (nothing is allocated, no SVD is run when the projector can plan its size):
//
//   optim::memory_report<float> rep(model.named_parameters());      // or a list of shapes
//   rep.add<optim::adamw<float>>("AdamW")
//      .add<optim::adamw8bit<float>>("AdamW 8-bit")
//      .add_projected<optim::adamw<float>, optim::galore_projector<float>>("GaLore r=128", go)
//      .add_projected<optim::adamw<float>, optim::galore_projector<float>, optim::q8_storage<>>(
//          "GaLore 8-bit r=128", go);
//   std::cout << rep.table();
//
// The numbers are what state_bytes() of the same optimizer reports once every parameter has been
// updated (the tests check that), so they follow the same rules: projection of 2-D parameters
// with both dims >= rank, 8-bit storage only for tensors of >= min_8bit_size elements.
// compare_state_memory<T, Projectors...>(shapes, popts...) builds the usual comparison: AdamW,
// AdamW 8-bit, and for each projector type its projected AdamW in 32 and 8 bits.
#include <algorithm>
#include <cstddef>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "peft/autograd/variable.hpp"
#include "peft/core/error.hpp"
#include "peft/core/tensor.hpp"
#include "peft/optim/projected.hpp"
#include "peft/optim/quant8.hpp"
#include "peft/optim/rule_optimizer.hpp"

namespace peft::optim {

struct memory_row {
  std::string method;
  std::vector<std::size_t> bytes;  // per parameter
  std::size_t total = 0;
};

// "64.00 MiB"-style size.
inline std::string human_bytes(std::size_t n) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = double(n);
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  char buf[32];
  if (u == 0)
    std::snprintf(buf, sizeof buf, "%zu B", n);
  else
    std::snprintf(buf, sizeof buf, "%.2f %s", v, units[u]);
  return buf;
}

template <class T>
class memory_report {
 public:
  explicit memory_report(std::vector<shape_t> shapes, std::vector<std::string> names = {})
      : shapes_(std::move(shapes)), names_(std::move(names)) {
    if (names_.empty())
      for (std::size_t i = 0; i < shapes_.size(); ++i) names_.push_back(std::to_string(i));
    if (names_.size() != shapes_.size())
      throw value_error("memory_report: " + std::to_string(names_.size()) + " names for " +
                        std::to_string(shapes_.size()) + " shapes");
  }
  explicit memory_report(const std::vector<variable<T>>& params) {
    for (std::size_t i = 0; i < params.size(); ++i) {
      shapes_.push_back(params[i].shape());
      names_.push_back(std::to_string(i));
    }
  }
  explicit memory_report(const std::vector<std::pair<std::string, variable<T>>>& named) {
    for (const auto& [n, v] : named) {
      shapes_.push_back(v.shape());
      names_.push_back(n);
    }
  }

  // A full-rank optimizer (adamw<T>, adam<T>, sgd<T>, adafactor<T>, adamw8bit<T>).
  template <class Base, class Storage = typename projected_rule<Base>::storage>
  memory_report& add(std::string method,
                     const typename projected_rule<Base>::type::options_type& o = {},
                     std::size_t min_8bit_size = 4096) {
    using rule = typename projected_rule<Base>::type;
    memory_row row{std::move(method), {}, 0};
    for (const auto& s : shapes_) row.bytes.push_back(rule_bytes<rule, Storage>(o, s, min_8bit_size));
    return push(std::move(row));
  }

  // A projected optimizer whose projectors are built as Projector(popts, rows, cols, seed).
  template <class Base, class Projector, class Storage = typename projected_rule<Base>::storage>
  memory_report& add_projected(std::string method, const typename Projector::options_type& popts,
                               const typename projected_rule<Base>::type::options_type& o = {},
                               const projected_options& po = {}) {
    return add_projected<Base, Projector, Storage>(
        std::move(method), popts.rank,
        [popts](const projector_site& s) { return Projector(popts, s.rows, s.cols, s.seed); }, o,
        po);
  }
  // ... or by a factory, at `rank`.
  template <class Base, class Projector, class Storage = typename projected_rule<Base>::storage,
            class Factory>
  memory_report& add_projected(std::string method, std::size_t rank, Factory factory,
                               const typename projected_rule<Base>::type::options_type& o = {},
                               const projected_options& po = {}) {
    using rule = typename projected_rule<Base>::type;
    using engine = rule_optimizer<T, rule, Projector, Storage>;
    memory_row row{std::move(method), {}, 0};
    for (std::size_t i = 0; i < shapes_.size(); ++i) {
      const auto& s = shapes_[i];
      if (!engine::eligible(s, rank) || (po.select && !po.select(i, s))) {
        row.bytes.push_back(rule_bytes<rule, Storage>(o, s, po.min_8bit_size));
        continue;
      }
      const Projector p = factory(projector_site{i, s[0], s[1], 0});
      const auto ls = p.low_shape(s[0], s[1]);
      row.bytes.push_back(rule_bytes<rule, Storage>(o, {ls.first, ls.second}, po.min_8bit_size) +
                          engine::projector_planned_bytes(p, s[0], s[1]));
    }
    return push(std::move(row));
  }

  const std::vector<memory_row>& rows() const { return rows_; }
  const std::vector<shape_t>& shapes() const { return shapes_; }
  std::size_t total(const std::string& method) const {
    for (const auto& r : rows_)
      if (r.method == method) return r.total;
    throw value_error("memory_report: no method '" + method + "'");
  }
  std::size_t num_parameters() const {
    std::size_t n = 0;
    for (const auto& s : shapes_) n += numel(s);
    return n;
  }

  // One line per method: bytes, human size, bytes per parameter element, share of the first row.
  std::string table() const {
    std::vector<std::vector<std::string>> cells{
        {"method", "state bytes", "size", "bytes/param", "vs " + (rows_.empty() ? std::string("-") : rows_[0].method)}};
    const double n = double(num_parameters());
    for (const auto& r : rows_) {
      char per[32], rel[32];
      std::snprintf(per, sizeof per, "%.3f", n > 0 ? double(r.total) / n : 0.0);
      std::snprintf(rel, sizeof rel, "%.1f%%",
                    rows_[0].total ? 100.0 * double(r.total) / double(rows_[0].total) : 0.0);
      cells.push_back({r.method, std::to_string(r.total), human_bytes(r.total), per, rel});
    }
    return render(cells);
  }
  // One line per parameter, one column per method (bytes).
  std::string table_by_parameter() const {
    std::vector<std::vector<std::string>> cells;
    std::vector<std::string> head{"parameter", "shape"};
    for (const auto& r : rows_) head.push_back(r.method);
    cells.push_back(head);
    for (std::size_t i = 0; i < shapes_.size(); ++i) {
      std::vector<std::string> line{names_[i], shape_str(shapes_[i])};
      for (const auto& r : rows_) line.push_back(std::to_string(r.bytes[i]));
      cells.push_back(line);
    }
    return render(cells);
  }

 private:
  template <class Rule, class Storage>
  static std::size_t rule_bytes(const typename Rule::options_type& o, const shape_t& s,
                                std::size_t min_size) {
    std::size_t n = 0;
    for (const auto& sp : Rule::state_specs(o, s))
      n += Storage::template store<T>::planned_bytes(sp, min_size, sizeof(T));
    return n;
  }
  memory_report& push(memory_row row) {
    row.total = 0;
    for (auto b : row.bytes) row.total += b;
    rows_.push_back(std::move(row));
    return *this;
  }
  // Left-aligned first column, right-aligned numbers, columns separated by two spaces.
  static std::string render(const std::vector<std::vector<std::string>>& cells) {
    std::vector<std::size_t> w;
    for (const auto& line : cells)
      for (std::size_t c = 0; c < line.size(); ++c) {
        if (w.size() <= c) w.push_back(0);
        w[c] = std::max(w[c], line[c].size());
      }
    std::string out;
    for (std::size_t l = 0; l < cells.size(); ++l) {
      const auto& line = cells[l];
      for (std::size_t c = 0; c < line.size(); ++c) {
        const std::string pad(w[c] - line[c].size(), ' ');
        if (c > 0) out += "  ";
        out += c == 0 ? line[c] + pad : pad + line[c];
      }
      while (!out.empty() && out.back() == ' ') out.pop_back();
      out += '\n';
      if (l == 0) {
        std::size_t total = 0;
        for (auto x : w) total += x;
        out += std::string(total + 2 * (w.size() - 1), '-') + '\n';
      }
    }
    return out;
  }

  std::vector<shape_t> shapes_;
  std::vector<std::string> names_;
  std::vector<memory_row> rows_;
};

// AdamW, AdamW 8-bit, then for each projector: projected AdamW with 32-bit and 8-bit moments.
// Names: "<projector name> r=<rank>" and "... 8-bit".
template <class T, class... Projectors>
memory_report<T> compare_state_memory(const std::vector<shape_t>& shapes,
                                      const typename Projectors::options_type&... popts) {
  memory_report<T> rep(shapes);
  rep.template add<adamw<T>>("AdamW").template add<adamw8bit<T>>("AdamW 8-bit");
  auto one = [&rep]<class P>(const typename P::options_type& o) {
    std::string n = "projector";
    if constexpr (requires { P::options_type::name; }) n = P::options_type::name;
    n += " r=" + std::to_string(o.rank);
    rep.template add_projected<adamw<T>, P>(n, o);
    rep.template add_projected<adamw<T>, P, q8_storage<>>(n + " 8-bit", o);
  };
  (one.template operator()<Projectors>(popts), ...);
  return rep;
}

}  // namespace peft::optim
