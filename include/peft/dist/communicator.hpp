#pragma once
// The collective operations data-parallel training and federated aggregation need, behind one
// interface, so the math above it is written (and tested) once:
//   communicator          rank(), size(), allreduce_sum(span<float|double>), broadcast(span, root),
//                         barrier(), and traffic counters (payload bytes handed to collectives);
//   self_communicator     one rank, every collective a no-op (a 1-process run without MPI);
//   thread_communicator   N ranks as N threads of one process (run_threads), for tests and for
//                         machines without MPI; its sum is computed in rank order, identically
//                         on every rank;
//   mpi_communicator      (mpi.hpp, needs <mpi.h>) MPI_Allreduce / MPI_Bcast.
// This header needs no MPI.
//
// Every rank must call the same collectives in the same order with the same sizes (as MPI
// requires). The thread implementation checks the sizes and throws on a mismatch; when one rank
// throws, the others are released from their waits with an error instead of hanging.
#include <algorithm>
#include <concepts>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include "peft/core/error.hpp"

namespace peft::dist {

// Payload counters: bytes this rank handed to each kind of collective (an MPI ring all-reduce
// moves about 2·(p−1)/p times its payload over each rank's link).
struct traffic {
  std::size_t allreduce_calls = 0;
  std::size_t allreduce_bytes = 0;
  std::size_t broadcast_calls = 0;
  std::size_t broadcast_bytes = 0;
};

template <class T>
concept reducible_scalar = std::same_as<T, float> || std::same_as<T, double>;

class communicator {
 public:
  communicator() = default;
  communicator(const communicator&) = delete;
  communicator& operator=(const communicator&) = delete;
  virtual ~communicator() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  // "self", "threads", "mpi".
  virtual std::string name() const = 0;

  // In place: data ← elementwise sum of every rank's data. All ranks receive the same values.
  template <reducible_scalar T>
  void allreduce_sum(std::span<T> data) {
    ++stats_.allreduce_calls;
    stats_.allreduce_bytes += data.size_bytes();
    do_allreduce_sum(data.data(), data.size());
  }
  // In place: every rank's data ← root's data (any trivially copyable element type).
  template <class T>
    requires std::is_trivially_copyable_v<T>
  void broadcast(std::span<T> data, int root) {
    if (root < 0 || root >= size())
      throw value_error(name() + " communicator: broadcast root " + std::to_string(root) +
                        " outside [0, " + std::to_string(size()) + ")");
    ++stats_.broadcast_calls;
    stats_.broadcast_bytes += data.size_bytes();
    do_broadcast(static_cast<void*>(data.data()), data.size_bytes(), root);
  }
  virtual void barrier() = 0;

  const traffic& stats() const { return stats_; }
  void reset_stats() { stats_ = {}; }

 protected:
  virtual void do_allreduce_sum(float* data, std::size_t n) = 0;
  virtual void do_allreduce_sum(double* data, std::size_t n) = 0;
  virtual void do_broadcast(void* data, std::size_t bytes, int root) = 0;

 private:
  traffic stats_;
};

// A single rank: the sum over ranks is the data itself.
class self_communicator final : public communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string name() const override { return "self"; }
  void barrier() override {}

 protected:
  void do_allreduce_sum(float*, std::size_t) override {}
  void do_allreduce_sum(double*, std::size_t) override {}
  void do_broadcast(void*, std::size_t, int) override {}
};

namespace detail {

// Shared by the N thread_communicators of one group: a reusable barrier that can be aborted
// (a failing rank must not leave the others waiting forever) and the buffers each rank publishes.
class thread_hub {
 public:
  explicit thread_hub(int n) : n_(n), ptrs_(std::size_t(n)), sizes_(std::size_t(n)) {}

  int size() const { return n_; }

  void wait() {
    std::unique_lock<std::mutex> lock(m_);
    if (aborted_) throw error("thread_communicator: another rank failed");
    const std::uint64_t gen = gen_;
    if (++arrived_ == n_) {
      arrived_ = 0;
      ++gen_;
      cv_.notify_all();
      return;
    }
    cv_.wait(lock, [&] { return gen_ != gen || aborted_; });
    if (gen_ == gen) throw error("thread_communicator: another rank failed");
  }
  void abort() {
    std::lock_guard<std::mutex> lock(m_);
    aborted_ = true;
    cv_.notify_all();
  }

  // What rank r published for the current collective (valid between its two barriers).
  void publish(int r, const void* p, std::size_t n) {
    ptrs_[std::size_t(r)] = p;
    sizes_[std::size_t(r)] = n;
  }
  const void* ptr(int r) const { return ptrs_[std::size_t(r)]; }
  std::size_t published_size(int r) const { return sizes_[std::size_t(r)]; }

 private:
  int n_;
  std::mutex m_;
  std::condition_variable cv_;
  int arrived_ = 0;
  std::uint64_t gen_ = 0;
  bool aborted_ = false;
  std::vector<const void*> ptrs_;
  std::vector<std::size_t> sizes_;
};

}  // namespace detail

// One rank of an in-process group (see run_threads). Each collective publishes this rank's
// buffer, waits for all ranks, reads the others' buffers, and waits again before anyone may
// overwrite a published buffer: two barriers per collective.
class thread_communicator final : public communicator {
 public:
  thread_communicator(std::shared_ptr<detail::thread_hub> hub, int rank)
      : hub_(std::move(hub)), rank_(rank) {
    if (!hub_ || rank < 0 || rank >= hub_->size())
      throw value_error("thread_communicator: rank " + std::to_string(rank) + " outside [0, " +
                        std::to_string(hub_ ? hub_->size() : 0) + ")");
  }

  int rank() const override { return rank_; }
  int size() const override { return hub_->size(); }
  std::string name() const override { return "threads"; }
  void barrier() override { hub_->wait(); }

 protected:
  void do_allreduce_sum(float* data, std::size_t n) override { reduce(data, n, f_scratch_); }
  void do_allreduce_sum(double* data, std::size_t n) override { reduce(data, n, d_scratch_); }

  void do_broadcast(void* data, std::size_t bytes, int root) override {
    hub_->publish(rank_, data, bytes);
    hub_->wait();
    check_sizes("broadcast", bytes);
    if (rank_ != root && bytes) std::memcpy(data, hub_->ptr(root), bytes);
    hub_->wait();
  }

 private:
  template <class T>
  void reduce(T* data, std::size_t n, std::vector<T>& scratch) {
    hub_->publish(rank_, data, n);
    hub_->wait();
    check_sizes("allreduce_sum", n);
    // Rank order, the same on every rank: every rank gets bit-identical sums.
    scratch.resize(n);
    using vec = Eigen::Matrix<T, Eigen::Dynamic, 1>;
    Eigen::Map<vec> s(scratch.data(), Eigen::Index(n));
    s = Eigen::Map<const vec>(static_cast<const T*>(hub_->ptr(0)), Eigen::Index(n));
    for (int r = 1; r < size(); ++r)
      s += Eigen::Map<const vec>(static_cast<const T*>(hub_->ptr(r)), Eigen::Index(n));
    hub_->wait();
    std::copy(scratch.begin(), scratch.end(), data);
  }
  void check_sizes(const char* op, std::size_t mine) const {
    for (int r = 0; r < size(); ++r)
      if (hub_->published_size(r) != mine)
        throw value_error(std::string("thread_communicator: ") + op + ": rank " +
                          std::to_string(rank_) + " has " + std::to_string(mine) +
                          " elements, rank " + std::to_string(r) + " has " +
                          std::to_string(hub_->published_size(r)));
  }

  std::shared_ptr<detail::thread_hub> hub_;
  int rank_;
  std::vector<float> f_scratch_;
  std::vector<double> d_scratch_;
};

// Runs fn(communicator&) for ranks 0..n-1, each on its own thread, and waits for all of them.
// If any rank throws, the others are released from their collectives and the first exception
// is rethrown here.
template <class Fn>
void run_threads(int n, Fn&& fn) {
  if (n < 1) throw value_error("run_threads: " + std::to_string(n) + " ranks (must be >= 1)");
  auto hub = std::make_shared<detail::thread_hub>(n);
  std::vector<std::exception_ptr> errors(static_cast<std::size_t>(n));
  std::vector<std::thread> threads;
  threads.reserve(std::size_t(n));
  for (int r = 0; r < n; ++r)
    threads.emplace_back([&, r] {
      try {
        thread_communicator comm(hub, r);
        fn(static_cast<communicator&>(comm));
      } catch (...) {
        errors[std::size_t(r)] = std::current_exception();
        hub->abort();
      }
    });
  for (auto& t : threads) t.join();
  // The root cause, not the "another rank failed" errors it triggered elsewhere.
  std::exception_ptr first;
  for (auto& e : errors) {
    if (!e) continue;
    if (!first) first = e;
    try {
      std::rethrow_exception(e);
    } catch (const error& x) {
      if (std::string(x.what()).find("another rank failed") == std::string::npos) {
        first = e;
        break;
      }
    } catch (...) {
      first = e;
      break;
    }
  }
  if (first) std::rethrow_exception(first);
}

}  // namespace peft::dist
