#pragma once
// nn::embedding: a lookup table [num_embeddings, embedding_dim]; forward gathers rows by id.
// Initialised N(0, 1) like torch.nn.Embedding. The backward pass scatter-adds into the rows used.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "peft/autograd/ops/gather_rows.hpp"
#include "peft/core/random.hpp"
#include "peft/nn/module.hpp"

namespace peft::nn {

template <class T>
class embedding : public module<T> {
 public:
  embedding(std::size_t num_embeddings, std::size_t embedding_dim, rng& g) {
    if (num_embeddings == 0 || embedding_dim == 0)
      throw value_error("nn::embedding: num_embeddings = " + std::to_string(num_embeddings) +
                        ", embedding_dim = " + std::to_string(embedding_dim) + " (must be > 0)");
    weight = this->register_parameter("weight",
                                      randn<T>({num_embeddings, embedding_dim}, g, 0.0, 1.0));
  }
  // Wraps an existing table [num, dim] (loaded or shared).
  explicit embedding(variable<T> table) {
    if (!table.defined() || table.ndim() != 2)
      throw shape_error("nn::embedding: table must be 2-D [num, dim], got " +
                        (table.defined() ? shape_str(table.shape()) : std::string("undefined")));
    weight = this->register_parameter("weight", std::move(table));
  }

  std::string type_name() const override { return "embedding"; }

  std::size_t num_embeddings() const { return weight.dim(0); }
  std::size_t embedding_dim() const { return weight.dim(1); }

  // ids laid out row-major in index_shape -> index_shape + [dim]. Ids outside [0, num) throw.
  variable<T> forward(const std::vector<std::int64_t>& ids, const shape_t& index_shape) {
    if (numel(index_shape) != ids.size())
      throw shape_error("nn::embedding: " + std::to_string(ids.size()) +
                        " ids for index shape " + shape_str(index_shape));
    return gather_rows(weight, ids, index_shape);
  }
  // 1-D ids -> [n, dim].
  variable<T> forward(const std::vector<std::int64_t>& ids) {
    return forward(ids, shape_t{ids.size()});
  }
  variable<T> operator()(const std::vector<std::int64_t>& ids, const shape_t& index_shape) {
    return forward(ids, index_shape);
  }

  variable<T> weight;  // [num_embeddings, embedding_dim]
};

}  // namespace peft::nn
