#pragma once
// where: y = cond ? a : b elementwise, with NumPy broadcasting of cond, a and b.
// masked_fill: y = mask ? value : a, the mask broadcasting to a's shape (attention masks).
// Backward routes the gradient to the branch that was picked; broadcast operands receive the
// sum over their broadcast axes (accumulated in place into their gradient buffers).
#include <concepts>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "peft/autograd/variable.hpp"
#include "peft/detail/broadcast.hpp"

namespace peft {

namespace detail {

// Calls f(out, ic, ia, ib) for each element of the row-major result `out`, with the flat indices
// read from the three operands of shapes sc, sa, sb (broadcast to `out`).
template <class F>
void for_each_broadcast3(const shape_t& sc, const shape_t& sa, const shape_t& sb,
                         const shape_t& out, F&& f) {
  const std::size_t total = numel(out);
  if (sc == out && sa == out && sb == out) {
    for (std::size_t o = 0; o < total; ++o) f(o, o, o, o);
    return;
  }
  const auto stc = broadcast_strides(sc, out), sta = broadcast_strides(sa, out),
             stb = broadcast_strides(sb, out);
  const std::size_t nd = out.size();
  std::vector<std::size_t> idx(nd, 0);
  std::size_t ic = 0, ia = 0, ib = 0;
  for (std::size_t o = 0; o < total; ++o) {
    f(o, ic, ia, ib);
    for (std::size_t d = nd; d-- > 0;) {  // odometer increment
      if (++idx[d] < out[d]) {
        ic += stc[d];
        ia += sta[d];
        ib += stb[d];
        break;
      }
      ic -= stc[d] * (out[d] - 1);
      ia -= sta[d] * (out[d] - 1);
      ib -= stb[d] * (out[d] - 1);
      idx[d] = 0;
    }
  }
}

template <class V>
struct is_where_operand : std::false_type {};
template <class T>
struct is_where_operand<variable<T>> : std::true_type {};

template <class T>
variable<T> where_impl(const tensor<std::uint8_t>& cond, const variable<T>& a,
                       const variable<T>& b) {
  const shape_t sc = shape_of(cond), sa = a.shape(), sb = b.shape();
  shape_t sy;
  try {
    sy = broadcast_shape(broadcast_shape(sc, sa, "where"), sb, "where");
  } catch (const shape_error&) {
    throw shape_error("where: cond " + shape_str(sc) + ", a " + shape_str(sa) + ", b " +
                      shape_str(sb) + " do not broadcast");
  }
  tensor<T> y = tensor<T>::from_shape(sy);
  {
    const std::uint8_t* cp = cond.data();
    const T* ap = a.value().data();
    const T* bp = b.value().data();
    T* yp = y.data();
    for_each_broadcast3(sc, sa, sb, sy,
                        [&](std::size_t o, std::size_t ic, std::size_t ia, std::size_t ib) {
                          yp[o] = cp[ic] ? ap[ia] : bp[ib];
                        });
  }
  return make_result<T>(std::move(y), {a, b}, "where", [cond, sc, sa, sb, sy](node<T>& self) {
    auto& pa = *self.parents[0];
    auto& pb = *self.parents[1];
    const std::uint8_t* cp = cond.data();
    const T* gp = self.grad.data();
    T* dap = pa.requires_grad ? grad_buffer(pa).data() : nullptr;
    T* dbp = pb.requires_grad ? grad_buffer(pb).data() : nullptr;
    // a and b may be the same node: both pointers then address one buffer, which is correct.
    for_each_broadcast3(sc, sa, sb, sy,
                        [&](std::size_t o, std::size_t ic, std::size_t ia, std::size_t ib) {
                          if (cp[ic]) {
                            if (dap) dap[ia] += gp[o];
                          } else if (dbp) {
                            dbp[ib] += gp[o];
                          }
                        });
  });
}

}  // namespace detail

// Declared with forwarding references (constrained to a uint8 tensor and two variables) so that
// an unqualified call is not captured by xt::where, which ADL finds through the tensor argument
// and which would otherwise be a better match for non-const or rvalue arguments.
template <class C, class A, class B>
  requires std::same_as<std::remove_cvref_t<C>, tensor<std::uint8_t>> &&
           detail::is_where_operand<std::remove_cvref_t<A>>::value &&
           std::same_as<std::remove_cvref_t<A>, std::remove_cvref_t<B>>
auto where(C&& cond, A&& a, B&& b) {
  return detail::where_impl(static_cast<const tensor<std::uint8_t>&>(cond),
                            static_cast<const std::remove_cvref_t<A>&>(a),
                            static_cast<const std::remove_cvref_t<B>&>(b));
}

template <class T>
variable<T> masked_fill(const variable<T>& a, const tensor<std::uint8_t>& mask,
                        std::type_identity_t<T> value) {
  const shape_t sa = a.shape(), sm = shape_of(mask);
  bool ok = sm.size() <= sa.size();
  for (std::size_t k = 0; ok && k < sm.size(); ++k) {
    const std::size_t dm = sm[sm.size() - 1 - k], da = sa[sa.size() - 1 - k];
    ok = dm == da || dm == 1;
  }
  if (!ok)
    throw shape_error("masked_fill: mask " + shape_str(sm) + " does not broadcast to " +
                      shape_str(sa));
  tensor<T> y = tensor<T>::from_shape(sa);
  {
    const std::uint8_t* mp = mask.data();
    const T* ap = a.value().data();
    T* yp = y.data();
    if (sm == sa) {
      for (std::size_t i = 0; i < y.size(); ++i) yp[i] = mp[i] ? value : ap[i];
    } else {
      detail::for_each_broadcast(sm, sa, [&](std::size_t o, std::size_t im) {
        yp[o] = mp[im] ? value : ap[o];
      });
    }
  }
  return make_result<T>(std::move(y), {a}, "masked_fill", [mask, sm, sa](node<T>& self) {
    auto& p = *self.parents[0];
    if (!p.requires_grad) return;
    const std::uint8_t* mp = mask.data();
    const T* gp = self.grad.data();
    T* dp = detail::grad_buffer(p).data();
    detail::for_each_broadcast(sm, sa, [&](std::size_t o, std::size_t im) {
      if (!mp[im]) dp[o] += gp[o];
    });
  });
}

}  // namespace peft
