#pragma once
// Umbrella for peft/core: tensors and their Eigen views, seeded random numbers, errors, threads.
#include "peft/core/error.hpp"
#include "peft/core/random.hpp"
#include "peft/core/tensor.hpp"
#include "peft/core/threads.hpp"
