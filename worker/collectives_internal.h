// Internal to the collectives implementations (LibTorch c10d types).
#ifndef SPILL_WORKER_COLLECTIVES_INTERNAL_H_
#define SPILL_WORKER_COLLECTIVES_INTERNAL_H_

#include <torch/csrc/distributed/c10d/Store.hpp>

#include <chrono>

#include "absl/status/statusor.h"
#include "worker/rendezvous.h"

namespace spill::worker {

// Rank 0 hosts a c10d::TCPStore at master_addr:master_port, every rank
// connects; returns once all world_size ranks joined. Unavailable naming the
// address and c10d's message on failure or after `timeout`.
absl::StatusOr<c10::intrusive_ptr<c10d::Store>> ConnectTcpStore(const RendezvousInfo& info,
                                                                std::chrono::milliseconds timeout);

}  // namespace spill::worker

#endif  // SPILL_WORKER_COLLECTIVES_INTERNAL_H_
