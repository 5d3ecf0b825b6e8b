#include "worker/rendezvous.h"

#include <cstdlib>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace spill::worker {
namespace {

absl::StatusOr<int> IntVar(const std::function<const char*(const char*)>& env, const char* name,
                           int min, int max) {
  const char* value = env(name);
  if (value == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("environment variable ", name,
                     " is not set (launch with torchrun, which sets RANK, WORLD_SIZE, "
                     "LOCAL_RANK, MASTER_ADDR and MASTER_PORT)"));
  }
  int parsed = 0;
  if (!absl::SimpleAtoi(value, &parsed)) {
    return absl::InvalidArgumentError(
        absl::StrCat("environment variable ", name, "='", value, "' is not an integer"));
  }
  if (parsed < min || parsed > max) {
    return absl::InvalidArgumentError(absl::StrCat("environment variable ", name, "=", parsed,
                                                   " is outside [", min, ", ", max, "]"));
  }
  return parsed;
}

}  // namespace

absl::StatusOr<RendezvousInfo> RendezvousFromEnv(
    const std::function<const char*(const char*)>& getenv_fn) {
  std::function<const char*(const char*)> env = getenv_fn;
  if (!env) env = [](const char* name) { return static_cast<const char*>(std::getenv(name)); };
  RendezvousInfo info;
  const char* kVars[] = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"};
  bool any = false;
  for (const char* var : kVars) any = any || env(var) != nullptr;
  if (!any) return info;  // A single process.
  absl::StatusOr<int> world = IntVar(env, "WORLD_SIZE", 1, 1 << 20);
  if (!world.ok()) return world.status();
  absl::StatusOr<int> rank = IntVar(env, "RANK", 0, *world - 1);
  if (!rank.ok()) return rank.status();
  absl::StatusOr<int> local = IntVar(env, "LOCAL_RANK", 0, *world - 1);
  if (!local.ok()) return local.status();
  absl::StatusOr<int> port = IntVar(env, "MASTER_PORT", 1, 65535);
  if (!port.ok()) return port.status();
  const char* addr = env("MASTER_ADDR");
  if (addr == nullptr || addr[0] == '\0') {
    return absl::InvalidArgumentError(
        "environment variable MASTER_ADDR is not set or empty (the address of rank 0's host)");
  }
  info.world_size = *world;
  info.rank = *rank;
  info.local_rank = *local;
  info.master_port = *port;
  info.master_addr = addr;
  return info;
}

}  // namespace spill::worker
