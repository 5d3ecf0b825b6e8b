// SpilldProcess: a real spilld started on a private socket for a test.
//
//   auto d = SpilldProcess::Start({"--pinned-bytes=64MiB"});
//   ASSERT_TRUE(d.ok()) << d.status();
//   ... (*d)->socket_path() ...
//   EXPECT_EQ((*d)->Stop(), 0);   // SIGTERM, then the exit status
#ifndef SPILL_TESTS_INTEGRATION_SPILLD_PROCESS_H_
#define SPILL_TESTS_INTEGRATION_SPILLD_PROCESS_H_

#include <sys/types.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "spill/v1/spill.grpc.pb.h"

namespace spill::testing {

struct SpawnResult {
  pid_t pid = -1;
  int stdout_fd = -1;  // Read end of the child's stdout+stderr.
};

// Starts argv with stdout and stderr on a pipe, optionally under a prefix
// command (e.g. {"prlimit", "--memlock=1048576"}).
absl::StatusOr<SpawnResult> Spawn(const std::vector<std::string>& argv);
// Waits for pid; returns its exit code, or 128 + signal.
int WaitExit(pid_t pid);
// Reads everything from fd until EOF (or the deadline), then closes it.
std::string ReadAll(int fd, std::chrono::milliseconds deadline = std::chrono::seconds(20));

// A fresh directory <$SPILL_TEST_NVME_DIR or /var/tmp>/<prefix>-XXXXXX for
// an NVMe tier. FailedPrecondition naming the reason when its file system
// has no O_DIRECT (tmpfs): the test skips with it; Internal when it cannot
// be made. The caller removes it.
absl::StatusOr<std::string> MakeNvmeScratchDir(const std::string& prefix);

class SpilldProcess {
 public:
  // Starts spilld with --socket in a fresh temp dir plus the given flags
  // (defaults: --pinned-bytes=64MiB --segment-bytes=8MiB unless given), and
  // waits until Admin.Health answers SERVING.
  static absl::StatusOr<std::unique_ptr<SpilldProcess>> Start(std::vector<std::string> flags = {});
  ~SpilldProcess();

  const std::string& socket_path() const { return socket_path_; }
  const std::string& dir() const { return dir_; }
  pid_t pid() const { return pid_; }

  // SIGTERM and wait; returns the exit code (128 + signal if killed).
  int Stop();
  // Everything spilld printed (available after Stop).
  const std::string& output() const { return output_; }

  std::shared_ptr<grpc::Channel> NewChannel() const;
  spill::v1::Admin::Stub& admin() { return *admin_; }
  spill::v1::Worker::Stub& worker() { return *worker_; }

  // Convenience admin calls; fail the status on RPC error.
  absl::StatusOr<spill::v1::StatsResponse> Stats();
  absl::StatusOr<spill::v1::JobsResponse> Jobs();

 private:
  SpilldProcess() = default;
  std::string dir_;
  std::string socket_path_;
  pid_t pid_ = -1;
  int out_fd_ = -1;
  std::string output_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<spill::v1::Admin::Stub> admin_;
  std::unique_ptr<spill::v1::Worker::Stub> worker_;
};

// Path of the spilld binary under test: $SPILL_SPILLD, else the build's.
std::string SpilldPath();

}  // namespace spill::testing

#endif  // SPILL_TESTS_INTEGRATION_SPILLD_PROCESS_H_
