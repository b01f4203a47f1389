#pragma once
// Umbrella for peft/core: build-mode macros (config.hpp), tensors and their Eigen views, their caching allocator, seeded random
// numbers, errors, threads.
#include "peft/core/allocator.hpp"
#include "peft/core/config.hpp"
#include "peft/core/error.hpp"
#include "peft/core/random.hpp"
#include "peft/core/tensor.hpp"
#include "peft/core/threads.hpp"
