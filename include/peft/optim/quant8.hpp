#pragma once
// Block-wise 8-bit storage of optimizer states (Dettmers et al. 2022, "8-bit Optimizers via
// Block-wise Quantization", as bitsandbytes implements it):
//   - a tensor is cut into blocks of 256 consecutive elements; each block keeps its absmax as a
//     float32 and one byte per element: the index of the code-book value nearest to x / absmax;
//   - code books (256 sorted values in [-1, 1] or [0, 1]):
//       dynamic (bitsandbytes create_dynamic_map, max_exponent_bits 7): decade i = 0..6 holds the
//         midpoints of linspace(0.1, 1, n_i + 1) scaled by 10^(i−6), n_i = 2^i signed (with both
//         signs) or 2^(i+1) unsigned, plus 0 and 1. Signed for first moments, unsigned for
//         second moments (bitsandbytes' "dynamic" / "udynamic").
//       linear (create_linear_map, add_zero): signed k/127 for k = −127..127 (+ a second 0),
//         unsigned k/255.
//   - tensors with fewer than min_8bit_size (4096) elements stay in 32 bits, as bitsandbytes does.
// Error bounds (per element, y = x/absmax): linear ≤ absmax/(2·127) signed, absmax/(2·255)
// unsigned; dynamic relative to |x|, in decade i (|y| in [10^(i−7), 10^(i−6)]):
//   max(0.45 / (0.1·n_i + 0.45), 2.7 / (n_i − 0.9)) — half a code gap over the smallest value
//   next to it, within the decade or across its lower edge (6.6% signed / 3.4% unsigned in the
//   top decade); below 0.275e-6·absmax values flush to 0.
// The code-book values equal bitsandbytes' within float32 rounding (computed here in double).
//
// adamw8bit<T> is AdamW with both moments in 8 bits (bitsandbytes AdamW8bit, block-wise, without
// percentile clipping); projected<Base, Projector, q8_storage<>> keeps low-rank moments in 8 bits
// (GaLore's 8-bit variant).
#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <set>
#include <string>
#include <vector>

#include "peft/core/error.hpp"
#include "peft/core/tensor.hpp"
#include "peft/optim/adam.hpp"
#include "peft/optim/rule_optimizer.hpp"

namespace peft::optim {

enum class quant_map { dynamic, linear };
inline constexpr std::size_t q8_block_size = 256;

// A block-wise quantized tensor.
struct q8_tensor {
  shape_t shape;
  quant_map map = quant_map::dynamic;
  bool is_signed = true;
  std::vector<std::uint8_t> codes;  // one per element
  std::vector<float> absmax;        // one per block of q8_block_size elements

  std::size_t size() const { return codes.size(); }
  std::size_t bytes() const { return codes.size() + absmax.size() * sizeof(float); }
  static std::size_t bytes_for(std::size_t n) {
    return n + (n + q8_block_size - 1) / q8_block_size * sizeof(float);
  }
};

}  // namespace peft::optim

namespace peft::detail {

inline std::array<float, 256> sorted_code(std::vector<double> v) {
  v.resize(256, 0.0);  // bitsandbytes pads with zeros before sorting
  std::sort(v.begin(), v.end());
  std::array<float, 256> out{};
  for (std::size_t i = 0; i < 256; ++i) out[i] = float(v[i]);
  return out;
}

inline std::array<float, 256> make_dynamic_map(bool is_signed) {
  constexpr int max_exponent_bits = 7, non_sign_bits = 7;
  std::vector<double> data;
  for (int i = 0; i < max_exponent_bits; ++i) {
    const int n = 1 << (is_signed ? i + non_sign_bits - max_exponent_bits
                                  : i + non_sign_bits - max_exponent_bits + 1);
    const double scale = std::pow(10.0, double(-(max_exponent_bits - 1) + i));
    for (int k = 0; k < n; ++k) {
      const double b0 = 0.1 + 0.9 * double(k) / n, b1 = 0.1 + 0.9 * double(k + 1) / n;
      const double mean = (b0 + b1) / 2;
      data.push_back(scale * mean);
      if (is_signed) data.push_back(-scale * mean);
    }
  }
  data.push_back(0.0);
  data.push_back(1.0);
  return sorted_code(std::move(data));
}

inline std::array<float, 256> make_linear_map(bool is_signed) {
  std::vector<double> data;
  if (is_signed) {
    for (int k = -127; k <= 127; ++k) data.push_back(double(k) / 127.0);
  } else {
    for (int k = 0; k <= 255; ++k) data.push_back(double(k) / 255.0);
  }
  return sorted_code(std::move(data));
}

// A code book with a lookup table for a fast, branch-free nearest-value search: for every float
// whose top 16 bits are b, start[b] is the first code index whose value is >= the smallest float
// with those bits (so at most a step or two below the answer).
struct code_book {
  std::array<float, 256> values{};
  std::array<float, 258> padded{};  // -inf, values..., +inf: no bounds checks in nearest()
  std::vector<std::uint8_t> start;  // 65536 entries

  explicit code_book(const std::array<float, 256>& v) : values(v), start(65536) {
    padded[0] = -std::numeric_limits<float>::infinity();
    std::copy(v.begin(), v.end(), padded.begin() + 1);
    padded[257] = std::numeric_limits<float>::infinity();
    for (std::uint32_t b = 0; b < 65536; ++b) {
      // Bucket b holds the bit patterns b<<16 .. b<<16 | 0xFFFF; its smallest value is the first
      // pattern for positives and the last for negatives.
      const std::uint32_t bits = (b & 0x8000u) ? (b << 16) | 0xFFFFu : b << 16;
      float lo;
      std::memcpy(&lo, &bits, sizeof lo);
      const auto it = std::lower_bound(values.begin(), values.end(), lo);
      start[b] = std::uint8_t(std::min<std::ptrdiff_t>(it - values.begin(), 255));
    }
  }

  // Index of the value nearest to y (ties go to the lower value).
  std::uint8_t nearest(float y) const {
    std::uint32_t bits;
    std::memcpy(&bits, &y, sizeof bits);
    // j = 1 + lower_bound(values, y), capped at 256 (values[255] = 1 is the largest).
    std::size_t j = std::size_t(start[bits >> 16]) + 1;
    j += std::size_t(padded[j] < y);
    j += std::size_t(padded[j] < y);
    while (padded[j] < y && j < 256) ++j;  // rare: buckets spanning several codes
    j = std::min<std::size_t>(j, 256);
    j -= std::size_t((y - padded[j - 1]) <= (padded[j] - y));
    return std::uint8_t(j - 1);
  }
};

inline const code_book& quant_book(optim::quant_map m, bool is_signed) {
  static const code_book dyn_s(make_dynamic_map(true)), dyn_u(make_dynamic_map(false)),
      lin_s(make_linear_map(true)), lin_u(make_linear_map(false));
  if (m == optim::quant_map::dynamic) return is_signed ? dyn_s : dyn_u;
  return is_signed ? lin_s : lin_u;
}
inline const std::array<float, 256>& quant_code(optim::quant_map m, bool is_signed) {
  return quant_book(m, is_signed).values;
}

// Index of the code-book value nearest to y (ties go to the lower value), by plain search.
inline std::uint8_t nearest_code(const std::array<float, 256>& code, float y) {
  const auto it = std::lower_bound(code.begin(), code.end(), y);
  std::size_t i = std::min<std::size_t>(std::size_t(it - code.begin()), 255);
  if (i > 0 && (y - code[i - 1]) <= (code[i] - y)) --i;
  return std::uint8_t(i);
}

}  // namespace peft::detail

namespace peft::optim {

// Quantizes the numel(shape) values at x (a tensor's elements in order) block-wise into q,
// reusing q's buffers.
template <class T>
void quantize_blockwise_into(const T* x, const shape_t& shape, quant_map map, bool is_signed,
                             q8_tensor& q) {
  const std::size_t n = numel(shape);
  const auto& book = peft::detail::quant_book(map, is_signed);
  q.shape = shape;
  q.map = map;
  q.is_signed = is_signed;
  q.codes.resize(n);
  q.absmax.resize((n + q8_block_size - 1) / q8_block_size);
  // Normalised values of a block first (a vectorisable pass), then their codes; raw pointers so
  // that the byte stores do not force reloads of everything else (char types alias all).
  std::uint8_t* codes = q.codes.data();
  float* absmax = q.absmax.data();
  float y[q8_block_size];
  for (std::size_t b = 0; b < q.absmax.size(); ++b) {
    const std::size_t lo = b * q8_block_size, m = std::min(n, lo + q8_block_size) - lo;
    const T* xb = x + lo;
    T amax = T(0);
    for (std::size_t i = 0; i < m; ++i) amax = std::max(amax, T(std::abs(xb[i])));
    const float a = float(amax);
    absmax[b] = a;
    const T scale = T(a);
    if (a > 0)
      for (std::size_t i = 0; i < m; ++i) y[i] = float(xb[i] / scale);
    else
      std::fill(y, y + m, 0.0f);
    std::uint8_t out[q8_block_size];
    for (std::size_t i = 0; i < m; ++i) out[i] = book.nearest(y[i]);
    std::memcpy(codes + lo, out, m);
  }
}
template <class T>
q8_tensor quantize_blockwise(const T* x, const shape_t& shape, quant_map map = quant_map::dynamic,
                             bool is_signed = true) {
  q8_tensor q;
  quantize_blockwise_into(x, shape, map, is_signed, q);
  return q;
}
template <class T>
q8_tensor quantize_blockwise(const tensor<T>& x, quant_map map = quant_map::dynamic,
                             bool is_signed = true) {
  return quantize_blockwise(x.data(), shape_of(x), map, is_signed);
}

template <class T>
void dequantize_blockwise(const q8_tensor& q, T* out) {
  const auto& code = peft::detail::quant_code(q.map, q.is_signed);
  for (std::size_t i = 0; i < q.codes.size(); ++i)
    out[i] = T(code[q.codes[i]]) * T(q.absmax[i / q8_block_size]);
}
template <class T>
tensor<T> dequantize_blockwise(const q8_tensor& q) {
  tensor<T> t = tensor<T>::from_shape(q.shape);
  dequantize_blockwise(q, t.data());
  return t;
}

// Storage policy for rule_optimizer / projected: quantizable state tensors with at least
// min_8bit_size elements are kept block-wise in 8 bits (signed map, or unsigned for nonnegative
// states); the rest in full precision. A step dequantizes a parameter's state, updates it, and
// quantizes it back (bitsandbytes does the same inside one kernel).
template <quant_map Map = quant_map::dynamic>
struct q8_storage {
  static constexpr const char* name = "8-bit";
  template <class T>
  class store {
   public:
    void load(state_tensors<T>& work, state_tensors<T>& pool) {
      work = std::move(full_);
      full_.clear();
      for (const auto& [k, q] : q_) {
        tensor<T> t;
        if (auto it = pool.find(k); it != pool.end()) t = std::move(it->second);
        if (shape_of(t) != q.shape) t = tensor<T>::from_shape(q.shape);
        dequantize_blockwise(q, t.data());
        work[k] = std::move(t);
      }
    }
    void save(state_tensors<T>& work, const std::vector<state_spec>& specs, std::size_t min_size,
              state_tensors<T>& pool) {
      full_.clear();
      for (auto& [k, t] : work) {
        const state_spec* sp = nullptr;
        for (const auto& s : specs)
          if (s.name == k) sp = &s;
        if (sp && quantized(*sp, min_size)) {
          quantize_blockwise_into(t.data(), shape_of(t), Map, !sp->nonnegative, q_[k]);
          pool[k] = std::move(t);
        } else {
          q_.erase(k);
          full_[k] = std::move(t);
        }
      }
      work.clear();
    }
    std::size_t bytes() const {
      std::size_t n = 0;
      for (const auto& [k, t] : full_) n += t.size() * sizeof(T);
      for (const auto& [k, q] : q_) n += q.bytes();
      return n;
    }
    // 8-bit tensors as "<name>.codes" (the state's shape, values 0..255) + "<name>.absmax".
    void export_named(state_tensors<T>& out) const {
      for (const auto& [k, t] : full_) out[k] = t;
      for (const auto& [k, q] : q_) {
        tensor<T> c = tensor<T>::from_shape(q.shape), a = tensor<T>::from_shape({q.absmax.size()});
        for (std::size_t i = 0; i < q.codes.size(); ++i) c.data()[i] = T(q.codes[i]);
        for (std::size_t i = 0; i < q.absmax.size(); ++i) a.data()[i] = T(q.absmax[i]);
        out[k + ".codes"] = std::move(c);
        out[k + ".absmax"] = std::move(a);
      }
    }
    void import_named(const state_tensors<T>& in, const std::vector<state_spec>& specs,
                      std::size_t, std::set<std::string>& used, const std::string& who) {
      state_tensors<T> full;
      std::map<std::string, q8_tensor> qs;
      for (const auto& s : specs) {
        if (auto it = in.find(s.name); it != in.end()) {
          if (shape_of(it->second) != s.shape)
            throw shape_error(who + ": tensor '" + s.name + "' has shape " +
                              shape_str(it->second.shape()) + ", expected " + shape_str(s.shape));
          full[s.name] = it->second;
          used.insert(s.name);
          continue;
        }
        const std::string cn = s.name + ".codes", an = s.name + ".absmax";
        auto c = in.find(cn), a = in.find(an);
        if (c == in.end() || a == in.end())
          throw value_error(who + ": missing tensor '" + s.name + "' (or '" + cn + "' and '" +
                            an + "')");
        const std::size_t n = numel(s.shape), nb = (n + q8_block_size - 1) / q8_block_size;
        if (shape_of(c->second) != s.shape)
          throw shape_error(who + ": tensor '" + cn + "' has shape " +
                            shape_str(c->second.shape()) + ", expected " + shape_str(s.shape));
        if (shape_of(a->second) != shape_t{nb})
          throw shape_error(who + ": tensor '" + an + "' has shape " +
                            shape_str(a->second.shape()) + ", expected [" + std::to_string(nb) +
                            "]");
        q8_tensor q;
        q.shape = s.shape;
        q.map = Map;
        q.is_signed = !s.nonnegative;
        q.codes.resize(n);
        q.absmax.resize(nb);
        for (std::size_t i = 0; i < n; ++i) {
          const double v = double(c->second.data()[i]);
          if (!(v >= 0 && v <= 255 && std::floor(v) == v))
            throw value_error(who + ": tensor '" + cn + "' holds " + std::to_string(v) +
                              " (codes are integers in [0, 255])");
          q.codes[i] = std::uint8_t(v);
        }
        for (std::size_t i = 0; i < nb; ++i) {
          const double v = double(a->second.data()[i]);
          if (!(v >= 0 && std::isfinite(v)))
            throw value_error(who + ": tensor '" + an + "' holds " + std::to_string(v));
          q.absmax[i] = float(v);
        }
        qs[s.name] = std::move(q);
        used.insert(cn);
        used.insert(an);
      }
      full_ = std::move(full);
      q_ = std::move(qs);
    }
    static std::size_t planned_bytes(const state_spec& s, std::size_t min_size, std::size_t elem) {
      const std::size_t n = numel(s.shape);
      return quantized(s, min_size) ? q8_tensor::bytes_for(n) : n * elem;
    }

   private:
    static bool quantized(const state_spec& s, std::size_t min_size) {
      return s.quantizable && numel(s.shape) >= min_size;
    }
    state_tensors<T> full_;
    std::map<std::string, q8_tensor> q_;
  };
};

// AdamW with 8-bit block-wise moments (bitsandbytes AdamW8bit): the update rule is adamw's;
// m uses the signed dynamic map, v the unsigned one.
template <class T>
class adamw8bit
    : public rule_optimizer<T, peft::detail::adam_rule<T, adamw_options>, no_projector, q8_storage<>> {
  using base = rule_optimizer<T, peft::detail::adam_rule<T, adamw_options>, no_projector, q8_storage<>>;

 public:
  explicit adamw8bit(std::vector<variable<T>> params, const adamw_options& o = {},
                     std::size_t min_8bit_size = 4096)
      : base(std::move(params), o, make(min_8bit_size)) {}
  explicit adamw8bit(std::vector<param_group<T>> groups, const adamw_options& defaults = {},
                     std::size_t min_8bit_size = 4096)
      : base(std::move(groups), defaults, make(min_8bit_size)) {}

 private:
  static projected_options make(std::size_t min_8bit_size) {
    projected_options po;
    po.min_8bit_size = min_8bit_size;
    return po;
  }
};

}  // namespace peft::optim
