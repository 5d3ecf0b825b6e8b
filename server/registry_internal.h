// Registry's session and job records, shared by registry.cc and
// registry_tiers.cc. Not part of the registry's interface.
#ifndef SPILL_SERVER_REGISTRY_INTERNAL_H_
#define SPILL_SERVER_REGISTRY_INTERNAL_H_

#include <chrono>
#include <map>
#include <optional>
#include <set>
#include <string>

#include "server/registry.h"

namespace spill::server {

struct Registry::Session {
  uint64_t id = 0;
  Token token{};
  std::string job_id;
  int rank = 0;
  int world_size = 0;
  PeerCreds peer;
  bool attached = false;
  std::chrono::steady_clock::time_point attach_deadline;
  std::map<uint64_t, uint32_t> pins;  // object id -> pins held
};

struct Registry::Job {
  std::string id;
  // The arena's name for this job: unique to this instance of the job, so a
  // later job that reuses the id (perhaps another user's) is a different
  // owner to the arena and never inherits this one's segments unzeroed.
  std::string arena_key;
  uid_t uid = 0;
  int world_size = 0;
  std::map<uint64_t, ObjectRecord> objects;
  std::map<std::string, uint64_t> names;
  std::set<uint64_t> sessions;
  std::optional<std::chrono::steady_clock::time_point> grace_deadline;
  uint64_t used_bytes = 0;  // Sum of the objects' sizes.
  // Bytes of objects handed out by acquire / recorded by write-back, since
  // the job was created.
  uint64_t acquired_bytes = 0;
  uint64_t written_back_bytes = 0;
  // Registrations between their quota check and their allocation.
  uint64_t pending_bytes = 0;
  std::set<std::string> pending_names;
  // Objects pinned by computations inside spilld; the job is not freed
  // while any is.
  uint64_t compute_pins = 0;
  // Registered with the TierManager (it has or had kNvme objects).
  bool tiered = false;
  // Recovered from the NVMe manifest; cleared when a session opens.
  bool recovered = false;
  uint32_t nvme_objects = 0;
  // DeepSpeed budgets from the job's first session; the TierManager's
  // JobOptions carry them once the job is registered there.
  JobBudgets budgets;
};

}  // namespace spill::server

#endif  // SPILL_SERVER_REGISTRY_INTERNAL_H_
