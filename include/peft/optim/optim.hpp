#pragma once
// The optimizers: parameter groups and state (optimizer.hpp), SGD, Adam/AdamW, gradient
// clipping and learning-rate schedules.
#include "peft/optim/optimizer.hpp"
#include "peft/optim/sgd.hpp"
#include "peft/optim/adam.hpp"
#include "peft/optim/clip.hpp"
#include "peft/optim/schedule.hpp"
