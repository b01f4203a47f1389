#pragma once
// The small model the file tests adapt and save (PEFT dirs, combine/extract, the registry):
// encoder.{q_proj [6->5], v_proj [5->4]}, decoder.{q_proj [4->7], v_proj [7->5]}, and optionally
// classifier [5->3] (drawn last, so the other weights do not depend on it).
#include <cstdint>
#include <memory>

#include "peft/core/random.hpp"
#include "peft/nn/linear.hpp"
#include "peft/nn/module.hpp"

namespace peft::test {

template <class T>
struct block : nn::unary_module<T> {
  block(std::size_t in, std::size_t hid, std::size_t out, rng& g) {
    q_proj = std::make_shared<nn::linear<T>>(in, hid, true, g);
    v_proj = std::make_shared<nn::linear<T>>(hid, out, false, g);
    this->register_module("q_proj", q_proj);
    this->register_module("v_proj", v_proj);
  }
  variable<T> forward(const variable<T>& x) override { return v_proj->forward(q_proj->forward(x)); }
  std::shared_ptr<nn::unary_module<T>> q_proj, v_proj;  // slots that can hold an adapted layer
};

template <class T>
struct toy : nn::unary_module<T> {
  explicit toy(std::uint64_t seed = 1, bool with_classifier = true) {
    rng g(seed);
    encoder = std::make_shared<block<T>>(6, 5, 4, g);
    decoder = std::make_shared<block<T>>(4, 7, 5, g);
    this->register_module("encoder", encoder);
    this->register_module("decoder", decoder);
    if (with_classifier) {
      classifier = std::make_shared<nn::linear<T>>(5, 3, true, g);
      this->register_module("classifier", classifier);
    }
  }
  variable<T> forward(const variable<T>& x) override {
    auto h = decoder->forward(encoder->forward(x));
    return classifier ? classifier->forward(h) : h;
  }
  std::shared_ptr<block<T>> encoder, decoder;
  std::shared_ptr<nn::unary_module<T>> classifier;
};

}  // namespace peft::test
