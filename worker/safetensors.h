// The safetensors file format (https://github.com/huggingface/safetensors),
// written and read without a library: an 8-byte little-endian header length
// N, N bytes of a JSON object
//   {"<name>": {"dtype": "F32"|"F16"|"BF16", "shape": [..],
//               "data_offsets": [begin, end]}, ...,
//    "__metadata__": {"<key>": "<string>", ...}}
// padded with spaces to a multiple of 8, then the data section; offsets are
// relative to the data section's start.
//
//   SPILL_ASSIGN_OR_RETURN(auto w, SafetensorsWriter::Create(path, specs,
//   meta)); SPILL_RETURN_IF_ERROR(w->AppendFloats(values, StDType::kBF16));  //
//   in spec order SPILL_RETURN_IF_ERROR(w->Commit());
//
//   SPILL_ASSIGN_OR_RETURN(SafetensorsFile f, SafetensorsFile::Open(path));
//   const StTensorInfo* t = f.Find("block.0/master");
//   SPILL_RETURN_IF_ERROR(f.ReadBytes(*t, 0, buf, t->bytes()));
//
// Only the three float dtypes the checkpoints use are supported. Headers are
// deterministic: nlohmann's sorted keys and the declaration order of the data.
// Both classes are thread-compatible; SafetensorsFile::ReadBytes may be called
// from several threads at once (pread).
#ifndef SPILL_WORKER_SAFETENSORS_H_
#define SPILL_WORKER_SAFETENSORS_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/unique_fd.h"

namespace spill::worker {

enum class StDType { kF32, kF16, kBF16 };

// "F32", "F16", "BF16".
const char* StDTypeName(StDType dtype);
size_t StDTypeSize(StDType dtype);

// fp32 -> 16-bit by round-to-nearest-even; overflow gives inf, NaN stays a
// quiet NaN of the same sign, fp16 subnormals are rounded correctly.
uint16_t Fp32ToBf16(float value);
uint16_t Fp32ToFp16(float value);
float Bf16ToFp32(uint16_t bits);
float Fp16ToFp32(uint16_t bits);

struct StTensorSpec {
  std::string name;
  StDType dtype = StDType::kF32;
  std::vector<int64_t> shape;
};

struct StTensorInfo {
  std::string name;
  StDType dtype = StDType::kF32;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // Byte offsets in the data section.
  uint64_t end = 0;
  uint64_t bytes() const { return end - begin; }
  int64_t numel() const;
};

class SafetensorsWriter {
 public:
  // Starts writing `path` under a temp name in its directory: the header for
  // `tensors` (data laid out in this order) and `metadata`. InvalidArgument
  // for an empty or duplicate name, the name "__metadata__" or a negative
  // dimension; errno statuses for I/O (nothing is left behind).
  static absl::StatusOr<std::unique_ptr<SafetensorsWriter>> Create(
      const std::string& path, std::vector<StTensorSpec> tensors,
      const std::map<std::string, std::string>& metadata);
  // Without a successful Commit the temp file is removed; `path` untouched.
  ~SafetensorsWriter();
  SafetensorsWriter(const SafetensorsWriter&) = delete;
  SafetensorsWriter& operator=(const SafetensorsWriter&) = delete;

  // Appends raw data bytes (the tensors' data back to back, in declaration
  // order; calls need not align with tensor boundaries). FailedPrecondition
  // beyond the declared total; errno statuses for I/O.
  absl::Status Append(const void* data, size_t bytes);
  // Appends `values` converted to `dtype` (see Fp32ToBf16/Fp32ToFp16).
  absl::Status AppendFloats(absl::Span<const float> values, StDType dtype);
  // FailedPrecondition when fewer bytes than declared were appended; else
  // fsync, rename over `path`, fsync the directory.
  absl::Status Commit();

  const std::vector<StTensorInfo>& tensors() const { return tensors_; }

 private:
  SafetensorsWriter() = default;
  std::string path_, tmp_;
  UniqueFd fd_;
  std::vector<StTensorInfo> tensors_;
  uint64_t data_bytes_ = 0, written_ = 0;
  bool committed_ = false;
};

// The JSON header for `tensors` (in data order, offsets set) and metadata,
// padded to a multiple of 8, without the length prefix.
std::string EncodeSafetensorsHeader(const std::vector<StTensorInfo>& tensors,
                                    const std::map<std::string, std::string>& metadata);

class SafetensorsFile {
 public:
  // Largest header accepted (the reference implementation's limit).
  static constexpr uint64_t kMaxHeaderBytes = 100 << 20;

  // Opens and validates `path`. NotFound when it does not exist; DataLoss
  // naming the path for a file shorter than 8 bytes, a header length beyond
  // the file or kMaxHeaderBytes, a header that is not a JSON object, an entry
  // with an unknown dtype, a malformed shape or data_offsets, a byte count
  // that is not the shape's product times the dtype size, offsets that
  // overlap, leave a hole, or do not end exactly at the end of the file, or
  // __metadata__ values that are not strings; errno statuses for I/O.
  static absl::StatusOr<SafetensorsFile> Open(const std::string& path);

  const std::string& path() const { return path_; }
  // In data order.
  const std::vector<StTensorInfo>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // nullptr when absent.
  const StTensorInfo* Find(const std::string& name) const;
  // Reads `n` bytes at `offset` into `tensor`'s data. OutOfRange when the
  // range is not inside the tensor; DataLoss naming file and tensor when the
  // file is shorter than its header said (it shrank after Open); errno
  // statuses naming the file otherwise.
  absl::Status ReadBytes(const StTensorInfo& tensor, uint64_t offset, void* out, size_t n) const;

 private:
  SafetensorsFile() = default;
  // Fills tensors_ and metadata_ from the header JSON; why it is invalid, or
  // empty.
  std::string ParseHeader(const std::string& text, uint64_t data_bytes);

  std::string path_;
  UniqueFd fd_;
  uint64_t data_start_ = 0;
  std::vector<StTensorInfo> tensors_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace spill::worker

#endif  // SPILL_WORKER_SAFETENSORS_H_
