// WorkTable: the pending requests of one session's stream, by tag.
//
// The session starts a Work here before writing its request, the stream's
// reader completes it by the tag spilld echoes, and Shutdown fails whatever
// is left when the session closes or its stream breaks.
//
// Thread-safe.
#ifndef SPILL_CLIENT_WORK_TABLE_H_
#define SPILL_CLIENT_WORK_TABLE_H_

#include <cstdint>
#include <memory>
#include <mutex>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "client/work_driver.h"
#include "spill/work.h"

namespace spill::client::internal {

class WorkTable {
 public:
  WorkTable() = default;
  WorkTable(const WorkTable&) = delete;
  WorkTable& operator=(const WorkTable&) = delete;

  struct Started {
    std::shared_ptr<Work> work;
    // The request's tag; 0 when the table is shut down, in which case work
    // is already completed with the shutdown status and nothing may be sent.
    uint64_t tag = 0;
  };

  // The stream later Works' waiters drive (client/work_driver.h).
  void SetDriver(std::weak_ptr<WorkDriver> driver);

  // Creates a pending Work under a fresh, never reused tag (tags start at 1).
  Started Start(WorkOp op, uint64_t object_id);

  // Completes and forgets the Work under tag. Returns false for a tag that
  // is not pending (unknown, or already completed).
  bool Complete(uint64_t tag, absl::Status status, WorkResult result);

  // Fails every pending Work with status and makes every later Start return
  // a Work already failed with it. The first call's status wins.
  void Shutdown(const absl::Status& status);

  // A Work that is already completed with status; for requests refused
  // before they were sent.
  static std::shared_ptr<Work> Failed(WorkOp op, uint64_t object_id, absl::Status status);

  size_t pending() const;
  bool shut_down() const;

 private:
  mutable std::mutex mu_;
  uint64_t next_tag_ = 1;
  absl::Status shutdown_status_;
  bool shut_down_ = false;
  absl::flat_hash_map<uint64_t, std::shared_ptr<Work>> pending_;
  std::weak_ptr<WorkDriver> driver_;
};

}  // namespace spill::client::internal

#endif  // SPILL_CLIENT_WORK_TABLE_H_
