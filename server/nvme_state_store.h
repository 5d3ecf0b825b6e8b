// NvmeStateStore: where an optimizer group member's fp32 master weights and
// states live when the group keeps them on NVMe (DeepSpeed's
// offload_optimizer.device = nvme). The member's elements are cut into
// pieces of sub_group_size; each piece of each array (master, then each
// state) is one NvmeTier extent with its CRC32Cs.
//
// A step is all or nothing: WriteAsync writes each piece to a fresh extent
// (a shadow), and only Commit() makes the shadows the member's state (and
// frees the old extents); Abort() frees the shadows and keeps the old
// state. So a failed step leaves the state exactly as it was, at the cost
// of up to twice the member's NVMe bytes while a step runs.
//
// Thread-safety: ReadAsync/WriteAsync as optim::StateStore says (one
// StreamedStep at a time); Commit/Abort/Initialize/Free with no I/O in flight.
#ifndef SPILL_SERVER_NVME_STATE_STORE_H_
#define SPILL_SERVER_NVME_STATE_STORE_H_

#include <cstdint>
#include <functional>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "server/optim/streamed_step.h"
#include "storage/nvme_tier.h"

namespace spill::server {

class NvmeStateStore final : public optim::StateStore {
 public:
  // arrays = 1 + StateCount (master first). sub_group_size must be a
  // multiple of 1024 elements (so every buffer of a piece starts 4 KiB
  // aligned). `what` names the member in errors.
  NvmeStateStore(storage::NvmeTier* tier, std::string job, std::string what, int arrays,
                 uint64_t n, uint64_t sub_group_size);
  ~NvmeStateStore() override;

  // Fills one piece's buffers with its initial master and states.
  using PieceFiller = std::function<absl::Status(uint64_t begin, uint64_t count, float* master,
                                                 float* state[2])>;
  // Allocates and writes the initial state piece by piece through buffer
  // (4 KiB aligned, at least arrays * sub_group_size floats). Blocks until
  // written. On error nothing stays allocated: ResourceExhausted when the
  // NVMe tier (or the job's NVMe quota) cannot hold it, else the I/O error.
  absl::Status Initialize(const PieceFiller& fill, std::span<float> buffer);

  void ReadAsync(uint64_t begin, uint64_t count, float* master, float* state[2],
                 std::function<void(absl::Status)> done) override;
  void WriteAsync(uint64_t begin, uint64_t count, const float* master, float* const state[2],
                  std::function<void(absl::Status)> done) override;

  // Makes every piece written since the last Commit/Abort the state.
  void Commit();
  // Drops what was written since the last Commit/Abort.
  void Abort();
  // Frees every extent (the member is dropped).
  void Free();

  uint64_t nvme_bytes() const;
  uint64_t pieces() const { return pieces_.size(); }

 private:
  struct Stored {
    storage::NvmeExtent extent;
    std::vector<uint32_t> crcs;
    bool valid = false;
  };
  struct Piece {
    std::vector<Stored> current;  // One per array.
    std::vector<Stored> shadow;
  };
  // Runs fn(array, callback) for every array; done gets the first error
  // once all callbacks ran.
  void ForEachArray(std::function<void(int, std::function<void(absl::Status)>)> fn,
                    std::function<void(absl::Status)> done);
  void FreeStored(Stored& s);

  storage::NvmeTier* const tier_;
  const std::string job_;
  const std::string what_;
  const int arrays_;
  const uint64_t n_;
  const uint64_t sub_group_size_;
  std::mutex mu_;  // Guards pieces_' shadows while writes complete.
  std::vector<Piece> pieces_;
};

}  // namespace spill::server

#endif  // SPILL_SERVER_NVME_STATE_STORE_H_
