#include "client/segment_map.h"

#include <chrono>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/cuda_host_register.h"
#include "common/status_macros.h"

namespace spill::client::internal {
namespace {

double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

SegmentMap::SegmentMap(Fetch fetch, bool register_with_cuda)
    : fetch_(std::move(fetch)), register_with_cuda_(register_with_cuda) {
  stats_.cuda_compiled = CudaCompiled();
  if (!register_with_cuda_) {
    cuda_skip_reason_ = "disabled by SessionOptions::register_with_cuda";
  } else {
    CudaUsable(&cuda_skip_reason_);
  }
  stats_.cuda_skip_reason = cuda_skip_reason_;
}

SegmentMap::~SegmentMap() { Clear(); }

absl::StatusOr<absl::Span<uint8_t>> SegmentMap::Resolve(uint64_t segment_id, uint64_t offset,
                                                        uint64_t length) {
  SPILL_ASSIGN_OR_RETURN(Segment * segment, FindOrMap(segment_id));
  uint64_t size = segment->mapping.size();
  if (offset > size || length > size - offset) {
    return absl::OutOfRangeError(absl::StrCat("bytes [", offset, ", ", offset, " + ", length,
                                              ") do not fit segment ", segment_id, " of ", size,
                                              " bytes"));
  }
  return absl::Span<uint8_t>(segment->mapping.data() + offset, length);
}

absl::StatusOr<SegmentMap::Segment*> SegmentMap::FindOrMap(uint64_t segment_id) {
  auto find = [&]() -> absl::StatusOr<Segment*> {
    std::lock_guard<std::mutex> lock(mu_);
    if (cleared_) return absl::FailedPreconditionError("the session is closed; its segments are unmapped");
    auto it = segments_.find(segment_id);
    return it == segments_.end() ? nullptr : it->second.get();
  };
  SPILL_ASSIGN_OR_RETURN(Segment * found, find());
  if (found != nullptr) return found;

  std::lock_guard<std::mutex> fetch_lock(fetch_mu_);
  SPILL_ASSIGN_OR_RETURN(found, find());  // Another thread may have mapped it meanwhile.
  if (found != nullptr) return found;
  SPILL_ASSIGN_OR_RETURN(std::unique_ptr<Segment> fresh, MapNew(segment_id));
  std::lock_guard<std::mutex> lock(mu_);
  Segment* raw = fresh.get();
  stats_.segments_mapped++;
  stats_.bytes_mapped += raw->mapping.size();
  segments_.emplace(segment_id, std::move(fresh));
  return raw;
}

absl::StatusOr<std::unique_ptr<SegmentMap::Segment>> SegmentMap::MapNew(uint64_t segment_id) {
  auto start = std::chrono::steady_clock::now();
  SPILL_ASSIGN_OR_RETURN(ReceivedSegment received, fetch_(segment_id));
  if (received.size_bytes == 0) {
    return absl::InternalError(absl::StrCat("spilld announced segment ", segment_id, " as empty"));
  }
  absl::Status sealed = CheckReceivedSegment(received.fd.get(), received.size_bytes);
  if (!sealed.ok()) {
    return absl::Status(sealed.code(), absl::StrCat("segment ", segment_id, ": ", sealed.message()));
  }
  auto segment = std::make_unique<Segment>();
  SPILL_ASSIGN_OR_RETURN(segment->mapping,
                         Mapping::Map(received.fd.get(), received.size_bytes, /*populate=*/true));
  double map_seconds = SecondsSince(start);

  double register_seconds = 0;
  if (cuda_skip_reason_.empty()) {
    auto register_start = std::chrono::steady_clock::now();
    absl::Status registered =
        CudaHostRegister(segment->mapping.data(), segment->mapping.size());
    register_seconds = SecondsSince(register_start);
    if (!registered.ok()) {
      return absl::Status(registered.code(),
                          absl::StrCat("segment ", segment_id, ": ", registered.message(),
                                       " (set SessionOptions::register_with_cuda = false to run "
                                       "without registration)"));
    }
    segment->cuda_registered = true;
  }
  std::lock_guard<std::mutex> lock(mu_);
  stats_.map_seconds += map_seconds;
  if (segment->cuda_registered) {
    stats_.cuda_registered_segments++;
    stats_.cuda_registered_bytes += segment->mapping.size();
    stats_.cuda_register_seconds += register_seconds;
  }
  return segment;
}

MappingStats SegmentMap::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

void SegmentMap::Clear() {
  absl::flat_hash_map<uint64_t, std::unique_ptr<Segment>> doomed;
  {
    std::lock_guard<std::mutex> fetch_lock(fetch_mu_);
    std::lock_guard<std::mutex> lock(mu_);
    cleared_ = true;
    doomed.swap(segments_);
  }
  for (auto& [id, segment] : doomed) {
    if (segment->cuda_registered) {
      CudaHostUnregister(segment->mapping.data(), segment->mapping.size());
    }
    segment->mapping.Reset();
  }
}

}  // namespace spill::client::internal
