#pragma once
// DCT initialisation: A = r rows of the orthonormal DCT-II basis of the input dimension,
//   A[i, j] = c_k · cos(π (2j + 1) k_i / (2·in))      (detail/dct.hpp),  B = 0
// a deterministic, data-free alternative to LoRA's random A: the rows are exactly orthonormal
// (A·Aᵀ = I), so x·Aᵀ keeps the input's energy in r frequency bands, and B = 0 makes the adapted
// layer equal the original at init (W unchanged).
// Frequencies: the r lowest (k = 0..r-1), or the r carrying most of W's energy along the input
// axis, ‖W·d_k‖² with d_k the k-th basis vector (largest first; needs the base weight).
#include <algorithm>
#include <numeric>
#include <string>
#include <vector>

#include "peft/detail/dct.hpp"
#include "peft/init/policy.hpp"
#include "peft/init/svd.hpp"

namespace peft::init {

enum class dct_selection { lowest, energy };

struct dct {
  dct_selection select = dct_selection::lowest;

  // The frequencies A's rows take, for a target of rank r and input size in.
  template <class T>
  std::vector<std::size_t> frequencies(init_target<T>& t) const {
    const std::size_t r = t.A.shape()[0], in = t.A.shape()[1];
    if (r == 0 || r > in)
      throw value_error("dct init: rank " + std::to_string(r) + " exceeds in_features " +
                        std::to_string(in));
    std::vector<std::size_t> k(in);
    std::iota(k.begin(), k.end(), std::size_t(0));
    if (select == dct_selection::energy) {
      const tensor<T>& W = detail::init_checked_base(t, "dct init (energy)");
      const matrix<double> E = detail::dct_rowwise<double>(detail::init_to_double(W));  // W·Dᵀ
      const vector<double> energy = E.colwise().squaredNorm().transpose();
      // Largest energy first; ties keep the lower frequency.
      std::stable_sort(k.begin(), k.end(), [&](std::size_t a, std::size_t b) {
        return energy[Eigen::Index(a)] > energy[Eigen::Index(b)];
      });
    }
    k.resize(r);
    return k;
  }

  template <class T>
  void operator()(init_target<T>& t) const {
    const auto k = frequencies(t);
    as_matrix(t.A) = detail::dct_basis_rows<double>(t.A.shape()[1], k).template cast<T>();
    t.B.fill(T(0));
  }
};

}  // namespace peft::init
