#pragma once
// peft/merge: combining LoRA adapters (Hugging Face PEFT's add_weighted_adapter: linear, cat, svd,
// ties, dare, magnitude_prune and their _svd forms) and extracting a LoRA from the difference of
// two weights (truncated SVD at a rank or an energy fraction), on matrices and on PEFT adapter
// directories.
#include "peft/merge/combine.hpp"
#include "peft/merge/extract.hpp"
