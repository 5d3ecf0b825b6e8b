#include "worker/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <set>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"
#include "worker/atomic_file.h"

namespace spill::worker {
namespace {

using nlohmann::json;

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian; this code copies host floats as is");

constexpr char kMetadataKey[] = "__metadata__";

uint32_t FloatBits(float f) { return std::bit_cast<uint32_t>(f); }

bool ParseDType(const std::string& name, StDType* out) {
  if (name == "F32")
    *out = StDType::kF32;
  else if (name == "F16")
    *out = StDType::kF16;
  else if (name == "BF16")
    *out = StDType::kBF16;
  else
    return false;
  return true;
}


// pread of exactly n bytes; *got is what was read before EOF.
absl::Status PreadFull(int fd, void* out, size_t n, uint64_t offset, size_t* got,
                       const std::string& path) {
  *got = 0;
  char* p = static_cast<char*>(out);
  while (*got < n) {
    const ssize_t r = ::pread(fd, p + *got, n - *got, static_cast<off_t>(offset + *got));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return absl::ErrnoToStatus(errno, absl::StrCat("read ", path));
    if (r == 0) break;
    *got += static_cast<size_t>(r);
  }
  return absl::OkStatus();
}

// Product of non-negative dims, false on overflow past 2^62.
bool ShapeNumel(const std::vector<int64_t>& shape, int64_t* out) {
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) return false;
    if (d != 0 && n > (int64_t{1} << 62) / d) return false;
    n *= d;
  }
  *out = n;
  return true;
}

// One header entry; an error string (empty on success).
std::string ParseEntry(const std::string& name, const json& v, StTensorInfo* t) {
  if (!v.is_object()) return "is not an object";
  const auto dt = v.find("dtype");
  if (dt == v.end() || !dt->is_string() || !ParseDType(dt->get<std::string>(), &t->dtype)) {
    return absl::StrCat("has dtype ", dt == v.end() ? "(none)" : dt->dump(),
                        ", expected one of F32, F16, BF16");
  }
  const auto shape = v.find("shape");
  if (shape == v.end() || !shape->is_array()) return "has no shape array";
  for (const json& d : *shape) {
    if (!d.is_number_unsigned()) return absl::StrCat("has a bad shape ", shape->dump());
    t->shape.push_back(d.get<int64_t>());
  }
  const auto off = v.find("data_offsets");
  if (off == v.end() || !off->is_array() || off->size() != 2 || !(*off)[0].is_number_unsigned() ||
      !(*off)[1].is_number_unsigned()) {
    return "has no data_offsets [begin, end]";
  }
  t->name = name;
  t->begin = (*off)[0].get<uint64_t>();
  t->end = (*off)[1].get<uint64_t>();
  if (t->end < t->begin) return absl::StrCat("has data_offsets ", off->dump(), " with end < begin");
  int64_t numel = 0;
  if (!ShapeNumel(t->shape, &numel)) return absl::StrCat("has a bad shape ", shape->dump());
  const uint64_t want = static_cast<uint64_t>(numel) * StDTypeSize(t->dtype);
  if (t->bytes() != want) {
    return absl::StrCat("has ", t->bytes(), " data bytes but shape ", shape->dump(), " of ",
                        StDTypeName(t->dtype), " needs ", want);
  }
  return "";
}

}  // namespace

const char* StDTypeName(StDType dtype) {
  switch (dtype) {
    case StDType::kF32:
      return "F32";
    case StDType::kF16:
      return "F16";
    case StDType::kBF16:
      return "BF16";
  }
  return "?";
}

size_t StDTypeSize(StDType dtype) { return dtype == StDType::kF32 ? 4 : 2; }

uint16_t Fp32ToBf16(float value) {
  const uint32_t x = FloatBits(value);
  if ((x & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((x >> 16) | 0x0040u);
  const uint32_t rounded = x + 0x7FFFu + ((x >> 16) & 1u);
  return static_cast<uint16_t>(rounded >> 16);
}

uint16_t Fp32ToFp16(float value) {
  const uint32_t x = FloatBits(value);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  const uint32_t a = x & 0x7FFFFFFFu;
  if (a > 0x7F800000u) return sign | 0x7E00u | ((a >> 13) & 0x3FFu);  // quiet NaN
  if (a >= 0x477FF000u) return sign | 0x7C00u;                        // >= 65520 rounds to inf
  if (a < 0x38800000u) {  // below 2^-14: an fp16 subnormal or zero
    const int e = static_cast<int>(a >> 23);
    if (e < 102) return sign;  // below 2^-25
    const uint32_t m = (a & 0x7FFFFFu) | 0x800000u;
    const int shift = 126 - e;  // 14..24
    uint32_t q = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1u))) ++q;
    return static_cast<uint16_t>(sign | q);
  }
  const uint32_t r = a + 0xFFFu + ((a >> 13) & 1u) - 0x38000000u;
  return static_cast<uint16_t>(sign | (r >> 13));
}

float Bf16ToFp32(uint16_t bits) { return std::bit_cast<float>(static_cast<uint32_t>(bits) << 16); }

float Fp16ToFp32(uint16_t bits) {
  const uint32_t sign = static_cast<uint32_t>(bits & 0x8000u) << 16;
  const uint32_t e = (bits >> 10) & 0x1Fu, m = bits & 0x3FFu;
  if (e == 0x1F) return std::bit_cast<float>(sign | 0x7F800000u | (m << 13));
  if (e != 0) return std::bit_cast<float>(sign | ((e + 112) << 23) | (m << 13));
  const float mag = static_cast<float>(m) * 0x1p-24f;  // exact: m < 2^10
  return sign ? -mag : mag;
}

int64_t StTensorInfo::numel() const {
  int64_t n = 0;
  return ShapeNumel(shape, &n) ? n : -1;
}

std::string EncodeSafetensorsHeader(const std::vector<StTensorInfo>& tensors,
                                    const std::map<std::string, std::string>& metadata) {
  json header = json::object();
  for (const StTensorInfo& t : tensors) {
    header[t.name] = {
        {"dtype", StDTypeName(t.dtype)}, {"shape", t.shape}, {"data_offsets", {t.begin, t.end}}};
  }
  if (!metadata.empty()) header[kMetadataKey] = metadata;
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  return text;
}

absl::StatusOr<std::unique_ptr<SafetensorsWriter>> SafetensorsWriter::Create(
    const std::string& path, std::vector<StTensorSpec> tensors,
    const std::map<std::string, std::string>& metadata) {
  std::unique_ptr<SafetensorsWriter> w(new SafetensorsWriter());
  std::set<std::string> names;
  for (StTensorSpec& spec : tensors) {
    if (spec.name.empty() || spec.name == kMetadataKey || !names.insert(spec.name).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("safetensors ", path, ": bad or duplicate tensor name '", spec.name, "'"));
    }
    int64_t numel = 0;
    if (!ShapeNumel(spec.shape, &numel)) {
      return absl::InvalidArgumentError(
          absl::StrCat("safetensors ", path, ": tensor '", spec.name, "' has a bad shape"));
    }
    StTensorInfo info{std::move(spec.name), spec.dtype, std::move(spec.shape), w->data_bytes_, 0};
    info.end = info.begin + static_cast<uint64_t>(numel) * StDTypeSize(info.dtype);
    w->data_bytes_ = info.end;
    w->tensors_.push_back(std::move(info));
  }
  const std::string header = EncodeSafetensorsHeader(w->tensors_, metadata);
  w->path_ = path;
  w->tmp_ = TempPathFor(path);
  w->fd_.Reset(::open(w->tmp_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
  if (!w->fd_.valid()) return absl::ErrnoToStatus(errno, absl::StrCat("create ", w->tmp_));
  char len[8];
  const uint64_t n = header.size();
  std::memcpy(len, &n, 8);
  SPILL_RETURN_IF_ERROR(WriteAllFd(w->fd_.get(), len, 8, w->tmp_));
  SPILL_RETURN_IF_ERROR(WriteAllFd(w->fd_.get(), header.data(), header.size(), w->tmp_));
  return w;
}

SafetensorsWriter::~SafetensorsWriter() {
  if (!committed_ && !tmp_.empty()) ::unlink(tmp_.c_str());
}

absl::Status SafetensorsWriter::Append(const void* data, size_t bytes) {
  if (committed_) return absl::FailedPreconditionError(absl::StrCat(path_, " already committed"));
  if (written_ + bytes > data_bytes_) {
    return absl::FailedPreconditionError(absl::StrCat("safetensors ", path_, ": appending ", bytes,
                                                      " bytes after ", written_,
                                                      " passes the declared ", data_bytes_));
  }
  SPILL_RETURN_IF_ERROR(WriteAllFd(fd_.get(), static_cast<const char*>(data), bytes, tmp_));
  written_ += bytes;
  return absl::OkStatus();
}

absl::Status SafetensorsWriter::AppendFloats(absl::Span<const float> values, StDType dtype) {
  if (dtype == StDType::kF32) return Append(values.data(), values.size() * sizeof(float));
  constexpr size_t kChunk = 1 << 16;
  std::vector<uint16_t> buf(std::min(kChunk, values.size()));
  for (size_t i = 0; i < values.size(); i += kChunk) {
    const size_t n = std::min(kChunk, values.size() - i);
    for (size_t k = 0; k < n; ++k) {
      buf[k] = dtype == StDType::kBF16 ? Fp32ToBf16(values[i + k]) : Fp32ToFp16(values[i + k]);
    }
    SPILL_RETURN_IF_ERROR(Append(buf.data(), n * sizeof(uint16_t)));
  }
  return absl::OkStatus();
}

absl::Status SafetensorsWriter::Commit() {
  if (committed_) return absl::FailedPreconditionError(absl::StrCat(path_, " already committed"));
  if (written_ != data_bytes_) {
    return absl::FailedPreconditionError(absl::StrCat("safetensors ", path_, ": ", written_, " of ",
                                                      data_bytes_, " data bytes written"));
  }
  if (::fsync(fd_.get()) != 0) return absl::ErrnoToStatus(errno, absl::StrCat("fsync ", tmp_));
  if (::close(fd_.Release()) != 0) return absl::ErrnoToStatus(errno, absl::StrCat("close ", tmp_));
  committed_ = true;  // CommitTempFile removes the temp itself on failure.
  return CommitTempFile(tmp_, path_);
}

absl::StatusOr<SafetensorsFile> SafetensorsFile::Open(const std::string& path) {
  SafetensorsFile f;
  f.path_ = path;
  f.fd_.Reset(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!f.fd_.valid()) {
    if (errno == ENOENT) return absl::NotFoundError(absl::StrCat(path, " does not exist"));
    return absl::ErrnoToStatus(errno, absl::StrCat("open ", path));
  }
  struct stat st;
  if (::fstat(f.fd_.get(), &st) != 0)
    return absl::ErrnoToStatus(errno, absl::StrCat("stat ", path));
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  auto loss = [&](const std::string& what) {
    return absl::DataLossError(absl::StrCat("safetensors file ", path, " is corrupt: ", what));
  };
  if (size < 8) return loss(absl::StrCat(size, " bytes, shorter than the 8-byte header length"));
  uint64_t n = 0;
  size_t got = 0;
  SPILL_RETURN_IF_ERROR(PreadFull(f.fd_.get(), &n, 8, 0, &got, path));
  if (got != 8) return loss("file shrank while reading the header length");
  if (n > size - 8) {
    return loss(absl::StrCat("header length ", n, " is beyond the file's ", size, " bytes"));
  }
  if (n > kMaxHeaderBytes) {
    return loss(absl::StrCat("header length ", n, " is over the limit of ", kMaxHeaderBytes));
  }
  std::string text(n, '\0');
  SPILL_RETURN_IF_ERROR(PreadFull(f.fd_.get(), text.data(), n, 8, &got, path));
  if (got != n) return loss("file shrank while reading the header");
  f.data_start_ = 8 + n;
  const std::string error = f.ParseHeader(text, size - f.data_start_);
  if (!error.empty()) return loss(error);
  for (size_t i = 0; i < f.tensors_.size(); ++i) f.index_[f.tensors_[i].name] = i;
  return f;
}

std::string SafetensorsFile::ParseHeader(const std::string& text, uint64_t data_bytes) {
  const json header = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (header.is_discarded() || !header.is_object()) return "header is not a JSON object";
  for (const auto& [name, value] : header.items()) {
    if (name == kMetadataKey) {
      if (!value.is_object()) return "__metadata__ is not an object";
      for (const auto& [k, v] : value.items()) {
        if (!v.is_string()) return absl::StrCat("__metadata__ value of '", k, "' is not a string");
        metadata_[k] = v.get<std::string>();
      }
      continue;
    }
    StTensorInfo t;
    const std::string error = ParseEntry(name, value, &t);
    if (!error.empty()) return absl::StrCat("tensor '", name, "' ", error);
    tensors_.push_back(std::move(t));
  }
  std::sort(tensors_.begin(), tensors_.end(), [](const StTensorInfo& a, const StTensorInfo& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t expected = 0;
  for (const StTensorInfo& t : tensors_) {
    if (t.begin != expected) {
      return absl::StrCat("tensor '", t.name, "' starts at ", t.begin, ", expected ", expected,
                          " (offsets overlap or leave a hole)");
    }
    expected = t.end;
  }
  if (expected != data_bytes) {
    return absl::StrCat("tensors end at data byte ", expected, " but the data section has ",
                        data_bytes, " bytes (truncated or trailing bytes)");
  }
  return "";
}

const StTensorInfo* SafetensorsFile::Find(const std::string& name) const {
  const auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

absl::Status SafetensorsFile::ReadBytes(const StTensorInfo& tensor, uint64_t offset, void* out,
                                        size_t n) const {
  if (offset > tensor.bytes() || n > tensor.bytes() - offset) {
    return absl::OutOfRangeError(absl::StrCat("read of ", n, " bytes at ", offset, " of tensor '",
                                              tensor.name, "' (", tensor.bytes(), " bytes) in ",
                                              path_));
  }
  size_t got = 0;
  SPILL_RETURN_IF_ERROR(
      PreadFull(fd_.get(), out, n, data_start_ + tensor.begin + offset, &got, path_));
  if (got != n) {
    return absl::DataLossError(absl::StrCat("safetensors file ", path_, " is truncated: tensor '",
                                            tensor.name, "' ends past the end of the file"));
  }
  return absl::OkStatus();
}

}  // namespace spill::worker
