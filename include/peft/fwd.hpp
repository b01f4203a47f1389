#pragma once
// Forward declarations and short aliases, for headers that only name peft types (a function
// taking a variable<float>&, a member shared_ptr<nn::module<float>>). Includes nothing heavy:
// no Eigen, no xtensor. Include the real headers (or peft/peft.hpp) to use the types.
//
// peft::tensor<T> is deliberately absent: it is an alias of an xtensor type and cannot be
// declared without xtensor's headers.
#include <cstddef>
#include <vector>

namespace peft {

using shape_t = std::vector<std::size_t>;  // same alias as peft/core/tensor.hpp

// core
struct error;
struct shape_error;
struct value_error;
struct io_error;
class rng;

// autograd
template <class T>
struct node;
template <class T>
class variable;
class no_grad_guard;
struct grad_check_options;
struct grad_check_result;

namespace nn {
template <class T>
class module;
template <class T>
class unary_module;
}  // namespace nn

// Short aliases for the two supported scalar types.
using variablef = variable<float>;
using variabled = variable<double>;

namespace nn {
using modulef = module<float>;
using moduled = module<double>;
}  // namespace nn

}  // namespace peft
