// The NVMe manifest: which objects of which jobs live where on the NVMe
// tier, so they survive a restart of the daemon.
//
// On disk, `<dir>/manifest` is a 20-byte header (magic "SPILLMF1", payload
// length as little-endian uint64, CRC32C of the payload as little-endian
// uint32) followed by a JSON payload. A file whose length, magic or checksum
// does not match is reported as torn or corrupt, never partly used.
//
// Publishing is atomic: the new manifest is written to a temporary file in
// the same directory, fsynced, renamed over `manifest`, and the directory is
// fsynced; a crash at any point leaves either the old or the new manifest.
//
//   Manifest m{.generation = 7, .jobs = {...}};
//   SPILL_RETURN_IF_ERROR(PublishManifest("/var/lib/spill", m));
//   absl::StatusOr<Manifest> loaded = LoadManifest("/var/lib/spill");
#ifndef SPILL_STORAGE_MANIFEST_H_
#define SPILL_STORAGE_MANIFEST_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "storage/nvme_tier.h"

namespace spill::storage {

struct ManifestObject {
  uint64_t id = 0;
  std::string name;
  int kind = 0;    // the wire value of the object kind
  int dtype = 0;   // the wire value of the dtype
  uint64_t num_elements = 0;
  uint64_t version = 0;
  NvmeExtent extent;
  std::vector<uint32_t> crcs;  // one per block, as NvmeTier::Write produced
  uint64_t bytes = 0;          // bytes written (what Read must ask for)
  bool operator==(const ManifestObject&) const = default;
};

struct ManifestJob {
  std::string job_id;
  uint32_t uid = 0;
  std::vector<ManifestObject> objects;
  bool operator==(const ManifestJob&) const = default;
};

struct Manifest {
  uint64_t generation = 0;
  std::vector<ManifestJob> jobs;
  bool operator==(const Manifest&) const = default;
};

// Atomically replaces <dir>/manifest with m (temp file, fsync, rename, fsync
// of the directory) and removes temporary files left by earlier crashed
// publishes. One publisher per directory at a time (callers serialise).
// Returns the errno status of the failing step, naming the file (ENOSPC ->
// ResourceExhausted); the previous manifest is intact then.
absl::Status PublishManifest(const std::string& dir, const Manifest& m);

// Reads <dir>/manifest. NotFound when there is none; DataLoss naming the
// file and what is wrong (too short, bad magic, length mismatch, checksum
// mismatch, malformed content) when torn or corrupt; never a partial
// result. Thread-safe.
absl::StatusOr<Manifest> LoadManifest(const std::string& dir);

// The file bytes PublishManifest writes for m (header + payload). For tests.
std::string EncodeManifest(const Manifest& m);

// Parses file bytes as LoadManifest does; `name` labels errors.
absl::StatusOr<Manifest> DecodeManifest(const std::string& bytes, const std::string& name);

}  // namespace spill::storage

#endif  // SPILL_STORAGE_MANIFEST_H_
