// Byte-level training data: a text file's bytes are the tokens (vocab 256,
// which fits any GPT vocab), served as deterministic [batch, seq_len]
// windows. No LibTorch: tokens come back as int64 vectors for the caller to
// wrap (at::from_blob).
//
//   absl::StatusOr<ByteDataset> data = ByteDataset::Open(path);
//   TokenBatch b = data->Batch(step, rank, world_size, batch, seq_len);
#ifndef SPILL_WORKER_DATA_H_
#define SPILL_WORKER_DATA_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace spill::worker {

// Text the repository provides, used when --data is not given:
// $SPILL_TRAIN_DATA when set and non-empty (the offline bundle's env.sh
// points it at its share/spill/data/corpus.txt), else the source tree's
// worker/data/corpus.txt.
std::string DefaultDataPath();

struct TokenBatch {
  int64_t batch = 0;
  int64_t seq_len = 0;
  std::vector<int64_t> tokens;   // batch * seq_len, row-major.
  std::vector<int64_t> targets;  // tokens shifted by one.
};

class ByteDataset {
 public:
  // Reads the whole file. NotFound / PermissionDenied naming the path;
  // InvalidArgument when it has fewer than 2 bytes.
  static absl::StatusOr<ByteDataset> Open(const std::string& path);
  static ByteDataset FromBytes(std::string bytes);

  int64_t size() const { return static_cast<int64_t>(bytes_.size()); }
  const std::string& path() const { return path_; }

  // Rows for (step, rank): row i starts at an offset drawn from a hash of
  // (step, rank, i, seed), so ranks see different rows, every call with the
  // same arguments returns the same rows, and a world of 1 running rank r's
  // rows reproduces them. InvalidArgument when seq_len + 1 exceeds the data
  // or a count is < 1.
  absl::StatusOr<TokenBatch> Batch(int64_t step, int rank, int64_t batch, int64_t seq_len,
                                   uint64_t seed = 0) const;

 private:
  std::string path_;
  std::string bytes_;
};

}  // namespace spill::worker

#endif  // SPILL_WORKER_DATA_H_
