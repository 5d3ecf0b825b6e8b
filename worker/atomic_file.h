// Small durable-file helpers for checkpoints: a file is written under a
// temporary name in its directory, fsynced, renamed over its final name and
// the directory fsynced, so a reader sees either the old file or the whole
// new one, also after a crash.
//
//   SPILL_RETURN_IF_ERROR(MakeDirs("/ckpt/global_step10"));
//   SPILL_RETURN_IF_ERROR(WriteFileAtomic("/ckpt/latest", "global_step10\n"));
//
// All functions are thread-compatible; temp names carry the pid and a
// process-wide sequence number so concurrent writers never share one.
#ifndef SPILL_WORKER_ATOMIC_FILE_H_
#define SPILL_WORKER_ATOMIC_FILE_H_

#include <cstddef>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace spill::worker {

// Creates `path` and its missing parents (mode 0755), fsyncing the parent
// of each directory it creates. OK when it already is a directory;
// FailedPrecondition when it or a parent is not one; errno statuses otherwise.
absl::Status MakeDirs(const std::string& path);

// Writes all n bytes to fd (retrying short writes and EINTR); the errno
// status naming `path` otherwise.
absl::Status WriteAllFd(int fd, const char* data, size_t n, const std::string& path);

// fsyncs the directory `dir`. errno status naming `dir` on failure.
absl::Status FsyncDir(const std::string& dir);

// A fresh temp name next to `path`: "<path>.tmp.<pid>.<seq>".
std::string TempPathFor(const std::string& path);

// Renames `tmp` over `path` and fsyncs path's directory. On a failed rename
// `tmp` is removed and the errno status names both paths.
absl::Status CommitTempFile(const std::string& tmp, const std::string& path);

// Writes `contents` to `path` atomically and durably (temp, write, fsync,
// rename, fsync dir). On failure `path` is unchanged and no temp is left.
absl::Status WriteFileAtomic(const std::string& path, const std::string& contents);

// The whole of a regular file of at most `max_bytes` bytes. NotFound when it
// does not exist; FailedPrecondition when it is larger; errno statuses.
absl::StatusOr<std::string> ReadSmallFile(const std::string& path, size_t max_bytes = 64 << 20);

// Whether `path` exists (any type). errno other than ENOENT counts as
// existing, so a caller never takes an unreadable path for absent.
bool PathExists(const std::string& path);

}  // namespace spill::worker

#endif  // SPILL_WORKER_ATOMIC_FILE_H_
