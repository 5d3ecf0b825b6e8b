// Where a rank finds its peers: torchrun's environment.
//
//   absl::StatusOr<RendezvousInfo> info = RendezvousFromEnv();
//
// No LibTorch dependency (the store itself is made in collectives_gloo.cc).
#ifndef SPILL_WORKER_RENDEZVOUS_H_
#define SPILL_WORKER_RENDEZVOUS_H_

#include <functional>
#include <string>

#include "absl/status/statusor.h"

namespace spill::worker {

struct RendezvousInfo {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
};

// Reads RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT through
// getenv (injectable for tests; nullptr means ::getenv). All five must be
// set, except that a single process (none of them set) is rank 0 of 1 on
// 127.0.0.1:29500. InvalidArgument naming the variable and its value for a
// missing variable, a non-integer, RANK or LOCAL_RANK outside
// [0, WORLD_SIZE), WORLD_SIZE < 1, an empty MASTER_ADDR or a port outside [1, 65535].
absl::StatusOr<RendezvousInfo> RendezvousFromEnv(
    const std::function<const char*(const char*)>& getenv_fn = nullptr);

}  // namespace spill::worker

#endif  // SPILL_WORKER_RENDEZVOUS_H_
