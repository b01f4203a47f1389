#pragma once
// Distributed training and federated aggregation (peft::dist). NOT included by peft/peft.hpp:
// MPI is optional, and this umbrella pulls in mpi.hpp, which needs <mpi.h> (CMake:
// find_package(MPI COMPONENTS CXX) and link MPI::MPI_CXX). Without MPI, include the parts that
// need none directly: communicator.hpp (interface, single-rank and thread communicators),
// synced_projector.hpp, data_parallel.hpp and federated.hpp.
#include "peft/dist/communicator.hpp"
#include "peft/dist/data_parallel.hpp"
#include "peft/dist/federated.hpp"
#include "peft/dist/mpi.hpp"
#include "peft/dist/synced_projector.hpp"
