#pragma once
// Module umbrella: every LoRA initialisation policy (peft::init) and the data collectors they
// need. The policy interface itself is init/policy.hpp (what adapters include).
#include "peft/init/policy.hpp"
#include "peft/init/gaussian.hpp"
#include "peft/init/svd.hpp"
#include "peft/init/qr.hpp"
#include "peft/init/gradient.hpp"
#include "peft/init/activation.hpp"
#include "peft/init/dct.hpp"
#include "peft/init/collect.hpp"
