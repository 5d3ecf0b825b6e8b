#include "storage/manifest.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"
#include "storage/crc32c.h"

namespace spill::storage {
namespace {

using nlohmann::json;

constexpr char kMagic[8] = {'S', 'P', 'I', 'L', 'L', 'M', 'F', '1'};
constexpr size_t kHeader = 20;
constexpr char kFileName[] = "manifest";
constexpr char kTempPrefix[] = "manifest.tmp.";

void PutLe(std::string* out, uint64_t v, int n) {
  for (int i = 0; i < n; ++i) out->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

uint64_t GetLe(const std::string& in, size_t at, int n) {
  uint64_t v = 0;
  for (int i = 0; i < n; ++i) v |= uint64_t{static_cast<uint8_t>(in[at + i])} << (8 * i);
  return v;
}

json ToJson(const ManifestObject& o) {
  json pieces = json::array();
  for (const NvmePiece& p : o.extent.pieces) pieces.push_back({p.dir, p.offset, p.length});
  return {{"id", o.id},
          {"name", o.name},
          {"kind", o.kind},
          {"dtype", o.dtype},
          {"num_elements", o.num_elements},
          {"version", o.version},
          {"bytes", o.bytes},
          {"crcs", o.crcs},
          {"extent", {{"bytes", o.extent.bytes}, {"pieces", pieces}}}};
}

// Throws nlohmann::json::exception on a missing field or wrong type; the
// caller turns that into DataLoss.
ManifestObject ObjectFromJson(const json& j) {
  ManifestObject o;
  o.id = j.at("id").get<uint64_t>();
  o.name = j.at("name").get<std::string>();
  o.kind = j.at("kind").get<int>();
  o.dtype = j.at("dtype").get<int>();
  o.num_elements = j.at("num_elements").get<uint64_t>();
  o.version = j.at("version").get<uint64_t>();
  o.bytes = j.at("bytes").get<uint64_t>();
  o.crcs = j.at("crcs").get<std::vector<uint32_t>>();
  o.extent.bytes = j.at("extent").at("bytes").get<uint64_t>();
  for (const json& p : j.at("extent").at("pieces")) {
    o.extent.pieces.push_back(
        {p.at(0).get<uint32_t>(), p.at(1).get<uint64_t>(), p.at(2).get<uint64_t>()});
  }
  return o;
}

absl::Status WriteAll(int fd, const std::string& data, const std::string& path) {
  size_t done = 0;
  while (done < data.size()) {
    const ssize_t n = ::write(fd, data.data() + done, data.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return absl::ErrnoToStatus(errno, absl::StrCat("write ", path));
    done += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

absl::Status FsyncPath(const std::string& path, int flags) {
  const int fd = ::open(path.c_str(), flags | O_CLOEXEC);
  if (fd < 0) return absl::ErrnoToStatus(errno, absl::StrCat("open ", path));
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  if (rc != 0) return absl::ErrnoToStatus(err, absl::StrCat("fsync ", path));
  return absl::OkStatus();
}

// Removes manifest.tmp.* files that crashed publishes left behind.
void RemoveStaleTemps(const std::string& dir) {
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return;
  while (dirent* e = ::readdir(d)) {
    if (std::strncmp(e->d_name, kTempPrefix, sizeof(kTempPrefix) - 1) == 0) {
      ::unlink(absl::StrCat(dir, "/", e->d_name).c_str());
    }
  }
  ::closedir(d);
}

absl::Status WriteTemp(const std::string& tmp, const std::string& bytes) {
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return absl::ErrnoToStatus(errno, absl::StrCat("create ", tmp));
  absl::Status status = WriteAll(fd, bytes, tmp);
  if (status.ok() && ::fsync(fd) != 0) {
    status = absl::ErrnoToStatus(errno, absl::StrCat("fsync ", tmp));
  }
  if (::close(fd) != 0 && status.ok()) {
    status = absl::ErrnoToStatus(errno, absl::StrCat("close ", tmp));
  }
  return status;
}

}  // namespace

std::string EncodeManifest(const Manifest& m) {
  json jobs = json::array();
  for (const ManifestJob& job : m.jobs) {
    json objects = json::array();
    for (const ManifestObject& o : job.objects) objects.push_back(ToJson(o));
    jobs.push_back({{"job_id", job.job_id}, {"uid", job.uid}, {"objects", objects}});
  }
  const std::string payload = json{{"generation", m.generation}, {"jobs", jobs}}.dump();
  std::string out(kMagic, sizeof(kMagic));
  PutLe(&out, payload.size(), 8);
  PutLe(&out, Crc32c(payload.data(), payload.size()), 4);
  out += payload;
  return out;
}

absl::StatusOr<Manifest> DecodeManifest(const std::string& bytes, const std::string& name) {
  auto loss = [&](const std::string& what) {
    return absl::DataLossError(absl::StrCat("manifest ", name, " is torn or corrupt: ", what));
  };
  if (bytes.size() < kHeader) {
    return loss(absl::StrCat(bytes.size(), " bytes, shorter than the ", kHeader, "-byte header"));
  }
  if (std::memcmp(bytes.data(), kMagic, sizeof(kMagic)) != 0) return loss("bad magic");
  const uint64_t len = GetLe(bytes, 8, 8);
  if (len != bytes.size() - kHeader) {
    return loss(absl::StrCat("header says ", len, " payload bytes, file has ",
                             bytes.size() - kHeader));
  }
  const uint32_t want = static_cast<uint32_t>(GetLe(bytes, 16, 4));
  const uint32_t got = Crc32c(bytes.data() + kHeader, len);
  if (want != got) {
    return loss(absl::StrFormat("payload CRC32C 0x%08x, header says 0x%08x", got, want));
  }
  const json j = json::parse(bytes.begin() + kHeader, bytes.end(), nullptr, false);
  if (j.is_discarded()) return loss("payload is not JSON");
  Manifest m;
  try {
    m.generation = j.at("generation").get<uint64_t>();
    for (const json& jj : j.at("jobs")) {
      ManifestJob job;
      job.job_id = jj.at("job_id").get<std::string>();
      job.uid = jj.at("uid").get<uint32_t>();
      for (const json& o : jj.at("objects")) job.objects.push_back(ObjectFromJson(o));
      m.jobs.push_back(std::move(job));
    }
  } catch (const json::exception& e) {
    return loss(absl::StrCat("malformed content: ", e.what()));
  }
  return m;
}

absl::Status PublishManifest(const std::string& dir, const Manifest& m) {
  static std::atomic<uint64_t> sequence{0};
  RemoveStaleTemps(dir);
  const std::string tmp =
      absl::StrCat(dir, "/", kTempPrefix, ::getpid(), ".", sequence.fetch_add(1));
  const std::string path = absl::StrCat(dir, "/", kFileName);
  absl::Status status = WriteTemp(tmp, EncodeManifest(m));
  if (status.ok() && ::rename(tmp.c_str(), path.c_str()) != 0) {
    status = absl::ErrnoToStatus(errno, absl::StrCat("rename ", tmp, " to ", path));
  }
  if (!status.ok()) {
    ::unlink(tmp.c_str());
    return status;
  }
  return FsyncPath(dir, O_RDONLY | O_DIRECTORY);
}

absl::StatusOr<Manifest> LoadManifest(const std::string& dir) {
  const std::string path = absl::StrCat(dir, "/", kFileName);
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return absl::NotFoundError(absl::StrCat("no manifest at ", path));
    return absl::ErrnoToStatus(errno, absl::StrCat("open ", path));
  }
  std::string bytes;
  char buf[1 << 16];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int err = errno;
      ::close(fd);
      return absl::ErrnoToStatus(err, absl::StrCat("read ", path));
    }
    if (n == 0) break;
    bytes.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return DecodeManifest(bytes, path);
}

}  // namespace spill::storage
