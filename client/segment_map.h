// SegmentMap: a session's mapped segments, by id.
//
// A segment is fetched (over the fd channel), checked (sealed memfd of the
// announced size), mapped MAP_SHARED and, when asked for and possible,
// registered with CUDA, all once, on first use. spilld never reuses a segment
// id, so a mapping stays valid for the id until Clear.
//
// Thread-safe. Lookups of mapped segments never wait for a fetch in progress.
#ifndef SPILL_CLIENT_SEGMENT_MAP_H_
#define SPILL_CLIENT_SEGMENT_MAP_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "client/fd_channel.h"
#include "common/memfd.h"
#include "spill/client.h"

namespace spill::client::internal {

class SegmentMap {
 public:
  using Fetch = std::function<absl::StatusOr<ReceivedSegment>(uint64_t segment_id)>;

  // fetch obtains a segment's descriptor (FdChannel::GetSegment in a session).
  SegmentMap(Fetch fetch, bool register_with_cuda);
  ~SegmentMap();
  SegmentMap(const SegmentMap&) = delete;
  SegmentMap& operator=(const SegmentMap&) = delete;

  // The bytes [offset, offset + length) of segment_id. OutOfRange when they
  // do not fit the segment; FailedPrecondition after Clear or for a segment
  // that is not a sealed memfd of its announced size; fetch's error, mmap's
  // error, or (with a CUDA device present) cudaHostRegister's error. A
  // failed segment is not kept, so a later call tries again.
  absl::StatusOr<absl::Span<uint8_t>> Resolve(uint64_t segment_id, uint64_t offset,
                                              uint64_t length);

  MappingStats stats() const;

  // Unregisters and unmaps every segment; later Resolve calls fail.
  void Clear();

 private:
  struct Segment {
    Mapping mapping;
    bool cuda_registered = false;
  };

  absl::StatusOr<Segment*> FindOrMap(uint64_t segment_id);
  absl::StatusOr<std::unique_ptr<Segment>> MapNew(uint64_t segment_id);

  const Fetch fetch_;
  const bool register_with_cuda_;
  std::string cuda_skip_reason_;
  // Serialises fetching and Clear; taken before mu_.
  std::mutex fetch_mu_;
  mutable std::mutex mu_;
  bool cleared_ = false;
  absl::flat_hash_map<uint64_t, std::unique_ptr<Segment>> segments_;
  MappingStats stats_;
};

}  // namespace spill::client::internal

#endif  // SPILL_CLIENT_SEGMENT_MAP_H_
