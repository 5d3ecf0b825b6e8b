#include "worker/data.h"

#include <cerrno>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"

#ifndef SPILL_DEFAULT_DATA
#define SPILL_DEFAULT_DATA "worker/data/corpus.txt"
#endif

namespace spill::worker {
namespace {

// splitmix64: a cheap, well-mixed hash for row offsets.
uint64_t Mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

}  // namespace

std::string DefaultDataPath() {
  const char* env = std::getenv("SPILL_TRAIN_DATA");  // Set by the bundle's env.sh.
  return env != nullptr && *env != '\0' ? env : SPILL_DEFAULT_DATA;
}

absl::StatusOr<ByteDataset> ByteDataset::Open(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    int err = errno;
    return absl::ErrnoToStatus(err, absl::StrCat("cannot read training data ", path));
  }
  std::stringstream buffer;
  buffer << in.rdbuf();
  ByteDataset data = FromBytes(buffer.str());
  data.path_ = path;
  if (data.size() < 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("training data ", path, " has ", data.size(), " bytes; need at least 2"));
  }
  return data;
}

ByteDataset ByteDataset::FromBytes(std::string bytes) {
  ByteDataset data;
  data.bytes_ = std::move(bytes);
  return data;
}

absl::StatusOr<TokenBatch> ByteDataset::Batch(int64_t step, int rank, int64_t batch,
                                              int64_t seq_len, uint64_t seed) const {
  if (batch < 1 || seq_len < 1 || step < 0 || rank < 0) {
    return absl::InvalidArgumentError(absl::StrCat("bad batch request: step=", step, " rank=",
                                                   rank, " batch=", batch, " seq_len=", seq_len));
  }
  if (seq_len + 1 > size()) {
    return absl::InvalidArgumentError(absl::StrCat("seq_len ", seq_len, " needs ", seq_len + 1,
                                                   " bytes of data; ", path_, " has ", size()));
  }
  TokenBatch b;
  b.batch = batch;
  b.seq_len = seq_len;
  b.tokens.reserve(batch * seq_len);
  b.targets.reserve(batch * seq_len);
  const uint64_t windows = static_cast<uint64_t>(size() - seq_len);  // start in [0, windows)
  for (int64_t i = 0; i < batch; ++i) {
    uint64_t h = Mix(Mix(Mix(seed ^ static_cast<uint64_t>(step)) ^ static_cast<uint64_t>(rank)) ^
                     static_cast<uint64_t>(i));
    const int64_t start = static_cast<int64_t>(h % windows);
    for (int64_t t = 0; t < seq_len; ++t) {
      b.tokens.push_back(static_cast<unsigned char>(bytes_[start + t]));
      b.targets.push_back(static_cast<unsigned char>(bytes_[start + t + 1]));
    }
  }
  return b;
}

}  // namespace spill::worker
