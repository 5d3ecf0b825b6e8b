// EvictionPolicy: which resident objects to drop from the pinned tier when
// pinned memory is short. Pure bookkeeping, no I/O, no memory of its own
// beyond the access orders and use times it tracks.
//
// Ranking of candidates (best victim first):
//  1. clean objects before dirty ones (a clean object's NVMe copy is current,
//     so dropping it costs nothing now);
//  2. when the object's job has sent an access order for the coming step (a
//     sequence of object ids) and a cursor into it: objects with no use at or
//     after the cursor first ("furthest"), then by the position of their next
//     use, furthest first (Belady's rule);
//     when the job has no order: least recently used first. Across jobs,
//     objects that their job's order says are not used again come first, then
//     objects of jobs without an order (LRU), then objects with a known next
//     use, furthest first: a known upcoming use is the strongest reason to
//     keep an object;
//  3. ties: least recently used, then job, then id (deterministic).
//
// The cursor: SetAccessOrder starts it at 0. Touch (an acquire) of the object
// at the cursor moves it one step; a touch of any other object leaves it
// where it is. A new order may be set at any time (it replaces the old one).
//
// Not thread-safe: the owner (the tier manager) serialises calls.
//
//   EvictionPolicy policy;
//   policy.SetAccessOrder("job", {3, 1, 2});
//   policy.Touch({"job", 3});
//   std::vector<EvictionCandidate> c = ...;  // unpinned resident objects
//   for (const ObjectKey& k : policy.ChooseVictims(c, need_bytes)) ...
#ifndef SPILL_STORAGE_EVICTION_POLICY_H_
#define SPILL_STORAGE_EVICTION_POLICY_H_

#include <cstdint>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"

namespace spill::storage {

struct ObjectKey {
  std::string job;
  uint64_t id = 0;
  bool operator==(const ObjectKey&) const = default;
  template <typename H>
  friend H AbslHashValue(H h, const ObjectKey& k) {
    return H::combine(std::move(h), k.job, k.id);
  }
};

struct EvictionCandidate {
  ObjectKey key;
  uint64_t bytes = 0;
  bool dirty = false;
};

class EvictionPolicy {
 public:
  // Distance reported for an object with no use left in its job's order.
  static constexpr uint64_t kNoNextUse = std::numeric_limits<uint64_t>::max();

  // Records a use of key now (its LRU time) and moves its job's cursor when
  // key is the object at the cursor.
  void Touch(const ObjectKey& key);

  // Forgets key's use time (the object was freed). Its id stays in the
  // job's order, if there, since the order is the client's statement.
  void Forget(const ObjectKey& key);

  // Replaces job's access order; cursor 0. An empty order removes it (the
  // job falls back to LRU).
  void SetAccessOrder(const std::string& job, std::vector<uint64_t> ids);

  // Forgets everything about job.
  void ForgetJob(const std::string& job);

  // Positions from the cursor to the next use of key in its job's order
  // (0 = the object at the cursor); kNoNextUse when it is not used again, or
  // when the job has no order.
  uint64_t NextUseDistance(const ObjectKey& key) const;

  bool HasOrder(const std::string& job) const;
  uint64_t Cursor(const std::string& job) const;  // 0 without an order

  // Candidates sorted best victim first (see the ranking above).
  std::vector<EvictionCandidate> Rank(std::vector<EvictionCandidate> candidates) const;

  // The shortest prefix of Rank(candidates) whose bytes sum to at least
  // need_bytes; empty when need_bytes is 0 or all candidates together fall
  // short (then evicting would not help, so nothing should be evicted).
  std::vector<ObjectKey> ChooseVictims(std::vector<EvictionCandidate> candidates,
                                       uint64_t need_bytes) const;

 private:
  struct Order {
    std::vector<uint64_t> ids;
    absl::flat_hash_map<uint64_t, std::vector<uint64_t>> positions;  // ascending
    uint64_t cursor = 0;
  };

  // Sort key of one candidate: smaller is a better victim.
  struct RankKey {
    bool dirty;
    int group;           // 0 unused again, 1 LRU job, 2 known next use
    uint64_t neg_next;   // for group 2: kNoNextUse - distance (furthest first)
    uint64_t last_use;
    const std::string* job;
    uint64_t id;
  };
  RankKey KeyOf(const EvictionCandidate& c) const;
  uint64_t LastUse(const ObjectKey& key) const;

  uint64_t clock_ = 0;
  absl::flat_hash_map<ObjectKey, uint64_t> last_use_;
  absl::flat_hash_map<std::string, Order> orders_;
};

}  // namespace spill::storage

#endif  // SPILL_STORAGE_EVICTION_POLICY_H_
