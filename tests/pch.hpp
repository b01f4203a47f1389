#pragma once
// Precompiled for every test executable: the heavy third-party headers and the core layers.
#include <catch2/catch.hpp>
#include <Eigen/Core>
#include <xtensor/xarray.hpp>
#include <xtensor/xreducer.hpp>
#include <xtensor/xmath.hpp>
#include "peft/core/tensor.hpp"
#include "peft/core/random.hpp"
#include "peft/autograd/variable.hpp"
#include "peft/autograd/grad_check.hpp"
