#pragma once
// Every LoRA initialisation policy (peft::init) and the data collectors they need. (init.hpp is
// the policy interface itself, so this umbrella has its own name.)
#include "peft/init/init.hpp"
#include "peft/init/gaussian.hpp"
#include "peft/init/svd.hpp"
#include "peft/init/qr.hpp"
#include "peft/init/gradient.hpp"
#include "peft/init/activation.hpp"
#include "peft/init/dct.hpp"
#include "peft/init/collect.hpp"
