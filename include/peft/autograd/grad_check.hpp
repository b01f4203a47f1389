#pragma once
// Finite-difference gradient check in double. The output of f is contracted with a fixed random
// weight w (L = sum(w * f(x))) so that every output element contributes; the analytic gradient
// is obtained by backward(seed = w) and compared with central differences of L.
#include <cmath>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "peft/autograd/variable.hpp"
#include "peft/core/random.hpp"

namespace peft {

struct grad_check_options {
  double eps = 1e-6;
  double atol = 1e-6;
  double rtol = 1e-4;
  std::uint64_t seed = 1234;
};

struct grad_check_result {
  bool ok = true;
  double max_abs_err = 0;
  double max_rel_err = 0;
  std::size_t checked = 0;   // number of input elements perturbed
  std::string report;        // first mismatches, "input i [flat index]: analytic vs numeric"
};

using grad_fn = std::function<variable<double>(const std::vector<variable<double>>&)>;

// Checks d sum(w*f(inputs)) / d inputs for every input that requires grad.
inline grad_check_result grad_check(const grad_fn& f, std::vector<variable<double>> inputs,
                                    const grad_check_options& opt = {}) {
  grad_check_result res;
  for (auto& x : inputs) x.zero_grad();
  variable<double> out = f(inputs);
  rng g(opt.seed);
  tensor<double> w = tensor<double>::from_shape(out.value().shape());
  for (auto& v : w) v = g.uniform(-1.0, 1.0);
  if (!out.requires_grad()) {
    res.ok = false;
    res.report = "output does not require grad";
    return res;
  }
  out.backward(w);

  auto contract = [&](const variable<double>& o) {
    double s = 0;
    auto ov = as_vector(o.value());
    auto wv = as_vector(w);
    for (Eigen::Index i = 0; i < ov.size(); ++i) s += ov[i] * wv[i];
    return s;
  };

  std::ostringstream rep;
  int reported = 0;
  for (std::size_t k = 0; k < inputs.size(); ++k) {
    auto& x = inputs[k];
    if (!x.requires_grad()) continue;
    tensor<double> analytic = x.has_grad() ? x.grad() : zeros<double>(x.shape());
    auto& xv = x.value();
    for (std::size_t i = 0; i < xv.size(); ++i) {
      const double orig = xv.data()[i];
      double lp, lm;
      {
        no_grad_guard ng;
        xv.data()[i] = orig + opt.eps;
        lp = contract(f(inputs));
        xv.data()[i] = orig - opt.eps;
        lm = contract(f(inputs));
        xv.data()[i] = orig;
      }
      const double num = (lp - lm) / (2 * opt.eps);
      const double ana = analytic.data()[i];
      const double abs_err = std::abs(num - ana);
      const double rel_err = abs_err / std::max(std::abs(num), std::abs(ana));
      ++res.checked;
      res.max_abs_err = std::max(res.max_abs_err, abs_err);
      if (abs_err > opt.atol) res.max_rel_err = std::max(res.max_rel_err, rel_err);
      if (abs_err > opt.atol + opt.rtol * std::abs(num)) {
        res.ok = false;
        if (reported++ < 8)
          rep << "input " << k << " [" << i << "]: analytic " << ana << " vs numeric " << num
              << "\n";
      }
    }
  }
  res.report = rep.str();
  return res;
}

}  // namespace peft
