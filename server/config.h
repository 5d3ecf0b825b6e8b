// spilld's configuration: command-line flags and an optional JSON file.
//
// Every setting has one name, used both as a flag (--pinned-bytes=64GiB) and
// as a key of the file ({"pinned_bytes": "64GiB"}; dashes and underscores are
// interchangeable). The file is read first; flags given on the command line
// override it. Unknown flags and keys are errors that name them.
#ifndef SPILL_SERVER_CONFIG_H_
#define SPILL_SERVER_CONFIG_H_

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "storage/pinned_arena.h"

namespace spill::server {

struct ServerConfig {
  std::string socket_path;
  // Group that owns the socket (training users); empty keeps spilld's group.
  std::string socket_group;
  uint64_t pinned_bytes = 0;
  uint64_t segment_bytes = uint64_t{1} << 30;
  storage::HugePageMode huge_pages = storage::HugePageMode::kAuto;
  uint64_t job_pinned_quota = 0;  // 0: the whole pool.
  std::chrono::milliseconds job_grace{std::chrono::minutes(5)};
  std::chrono::milliseconds attach_timeout{std::chrono::seconds(30)};
  std::chrono::milliseconds shutdown_timeout{std::chrono::seconds(10)};
  int worker_threads = 4;
  // When set: spilld stops (as on SIGTERM) once this process, its parent,
  // exits, and refuses to start when it is not its parent (tests, benches).
  int parent_pid = 0;
  // CPU optimizer: executor threads (0: one per CPU), the most one job's
  // step may use (0: all), and how many groups may step at once.
  // NVMe tier (off when nvme_dirs is empty); aio_* keep the meaning of
  // DeepSpeed's `aio` block.
  std::vector<std::string> nvme_dirs;
  uint64_t nvme_capacity = 0;  // Per directory.
  uint64_t job_nvme_quota = 0;  // 0: no limit.
  uint32_t aio_block_size = 1u << 20;
  int aio_queue_depth = 32;
  int aio_thread_count = 1;
  bool aio_single_submit = false;
  bool aio_overlap_events = true;
  bool nvme_sqpoll = false;
  // Where the NVMe manifest (objects with home NVME that survive a restart)
  // is published; empty: the first of nvme_dirs.
  std::string manifest_dir;
  int optim_threads = 0;
  int optim_threads_per_job = 0;
  int optim_concurrency = 4;
  // Nice value (0..19) of the optimizer's threads: the executor's and the
  // compute pool's. Above 0, threads that answer requests (and the training
  // processes on the same cores) preempt optimizer steps, so a fully busy
  // optimizer does not delay acquires and gradient copies. 0: no change.
  int optim_nice = 10;
  // Largest gRPC message spilld accepts; bulk data never travels over gRPC.
  // (Answers, such as a job's object list, may be larger.)
  uint64_t max_message_bytes = 64 * 1024;
  // Stream requests that cannot block (every one the pinned tier serves) run
  // on the gRPC reactor thread that read them ("inline"), saving a thread
  // hop per round trip; "pool" sends them to the worker pool like unary calls.
  bool stream_inline = true;
  // HOST:PORT for the Prometheus endpoint; empty (the default) serves none.
  std::string metrics_address;
  std::string config_file;
  // --validate: check the settings and exit without starting.
  bool validate_only = false;
};

// Text for --help.
std::string ConfigUsage();

// Parses argv (argv[0] is skipped). Loads --config=FILE first when present.
// InvalidArgument names the flag or key and what was wrong; a missing
// --socket or --pinned-bytes (after the file) is an error too.
// *help is set when --help was given (the config is then not validated).
absl::StatusOr<ServerConfig> ParseConfig(const std::vector<std::string>& args, bool* help);

// Every key a config file may use (underscore spelling), sorted. Flags are
// the same names with dashes, plus --config, --validate and --help.
std::vector<std::string> ConfigKeys();

// The effective settings, one "key=value" line each (for --validate).
std::string DescribeConfig(const ServerConfig& config);

// Parses a JSON config file's text into config (file keys only).
absl::Status ApplyConfigJson(const std::string& text, const std::string& source,
                             ServerConfig* config);

}  // namespace spill::server

#endif  // SPILL_SERVER_CONFIG_H_
