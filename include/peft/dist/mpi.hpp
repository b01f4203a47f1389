#pragma once
// The MPI implementation of communicator (communicator.hpp). Needs <mpi.h>: include it only when
// MPI is available (CMake: find_package(MPI COMPONENTS CXX), link MPI::MPI_CXX).
//
//   int main(int argc, char** argv) {
//     peft::dist::mpi_environment env(argc, argv);   // MPI_Init ... MPI_Finalize
//     peft::dist::mpi_communicator comm;             // a private duplicate of MPI_COMM_WORLD
//     ...
//   }
//
// The communicator duplicates the MPI communicator it is given (MPI_Comm_dup, collective), so
// the library's traffic never matches a user's messages, and sets MPI_ERRORS_RETURN on its
// duplicate so a failing call throws peft::error naming the call instead of aborting the job.
// Only MPI's C API is used: skip the deprecated C++ bindings (and their warnings).
#ifndef OMPI_SKIP_MPICXX
#define OMPI_SKIP_MPICXX 1
#endif
#ifndef MPICH_SKIP_MPICXX
#define MPICH_SKIP_MPICXX 1
#endif
#include <mpi.h>

#include <algorithm>
#include <climits>
#include <cstddef>
#include <string>

#include "peft/core/error.hpp"
#include "peft/dist/communicator.hpp"

namespace peft::dist {

namespace detail {
inline void mpi_check(int rc, const char* call) {
  if (rc == MPI_SUCCESS) return;
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, msg, &len);
  throw error(std::string("mpi: ") + call + " failed: " + std::string(msg, std::size_t(len)));
}
template <class T>
MPI_Datatype mpi_type();
template <>
inline MPI_Datatype mpi_type<float>() { return MPI_FLOAT; }
template <>
inline MPI_Datatype mpi_type<double>() { return MPI_DOUBLE; }
}  // namespace detail

// Initializes MPI for the lifetime of this object (unless something else already did, in which
// case it neither initializes nor finalizes). Threads: MPI_THREAD_FUNNELED (only the main thread
// calls MPI; Eigen's OpenMP threads never do).
class mpi_environment {
 public:
  mpi_environment(int& argc, char**& argv) {
    int inited = 0;
    MPI_Initialized(&inited);
    if (inited) return;
    int provided = 0;
    detail::mpi_check(MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided),
                      "MPI_Init_thread");
    owner_ = true;
  }
  mpi_environment(const mpi_environment&) = delete;
  mpi_environment& operator=(const mpi_environment&) = delete;
  ~mpi_environment() {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (owner_ && !finalized) MPI_Finalize();
  }

 private:
  bool owner_ = false;
};

class mpi_communicator final : public communicator {
 public:
  // Collective over `comm`: every rank of it must construct one.
  explicit mpi_communicator(MPI_Comm comm = MPI_COMM_WORLD) {
    int inited = 0;
    MPI_Initialized(&inited);
    if (!inited) throw error("mpi_communicator: MPI is not initialized (create an mpi_environment)");
    detail::mpi_check(MPI_Comm_dup(comm, &comm_), "MPI_Comm_dup");
    MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
    detail::mpi_check(MPI_Comm_rank(comm_, &rank_), "MPI_Comm_rank");
    detail::mpi_check(MPI_Comm_size(comm_, &size_), "MPI_Comm_size");
  }
  ~mpi_communicator() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized && comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string name() const override { return "mpi"; }
  void barrier() override { detail::mpi_check(MPI_Barrier(comm_), "MPI_Barrier"); }
  MPI_Comm native() const { return comm_; }

 protected:
  void do_allreduce_sum(float* data, std::size_t n) override { reduce(data, n); }
  void do_allreduce_sum(double* data, std::size_t n) override { reduce(data, n); }

  void do_broadcast(void* data, std::size_t bytes, int root) override {
    auto* p = static_cast<char*>(data);
    // MPI counts are int: large buffers go in chunks (every rank has the same size, so every
    // rank makes the same calls).
    for (std::size_t off = 0; off < bytes; off += chunk) {
      const int c = int(std::min(chunk, bytes - off));
      detail::mpi_check(MPI_Bcast(p + off, c, MPI_BYTE, root, comm_), "MPI_Bcast");
    }
  }

 private:
  static constexpr std::size_t chunk = std::size_t(INT_MAX) / 8 * 8;

  template <class T>
  void reduce(T* data, std::size_t n) {
    for (std::size_t off = 0; off < n; off += chunk) {
      const int c = int(std::min(chunk, n - off));
      detail::mpi_check(MPI_Allreduce(MPI_IN_PLACE, data + off, c, detail::mpi_type<T>(), MPI_SUM,
                                      comm_),
                        "MPI_Allreduce");
    }
  }

  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0, size_ = 1;
};

}  // namespace peft::dist
