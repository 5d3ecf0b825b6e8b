#include "server/config.h"

#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <sstream>

#include <nlohmann/json.hpp>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "common/status_macros.h"
#include "common/units.h"
#include "server/metrics_http.h"

namespace spill::server {
namespace {

using Setter = std::function<absl::Status(const std::string& value, ServerConfig* config)>;

absl::Status SetSize(const std::string& key, const std::string& value, uint64_t* out) {
  auto size = ParseSize(value);
  if (!size.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(key, ": ", size.status().message()));
  }
  *out = *size;
  return absl::OkStatus();
}

absl::Status SetDuration(const std::string& key, const std::string& value,
                         std::chrono::milliseconds* out) {
  auto d = ParseDuration(value);
  if (!d.ok()) return absl::InvalidArgumentError(absl::StrCat(key, ": ", d.status().message()));
  *out = *d;
  return absl::OkStatus();
}

absl::Status SetInt(const std::string& key, const std::string& value, int lo, int hi, int* out) {
  int n = 0;
  if (!absl::SimpleAtoi(value, &n) || n < lo || n > hi) {
    return absl::InvalidArgumentError(
        absl::StrCat(key, ": '", value, "' is not an integer in [", lo, ", ", hi, "]"));
  }
  *out = n;
  return absl::OkStatus();
}

absl::Status SetBool(const std::string& key, const std::string& value, bool* out) {
  if (value == "true" || value == "1" || value == "on") {
    *out = true;
  } else if (value == "false" || value == "0" || value == "off") {
    *out = false;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat(key, ": '", value, "' is not a boolean (true/false)"));
  }
  return absl::OkStatus();
}

absl::Status SetDirs(const std::string& value, std::vector<std::string>* out) {
  std::vector<std::string> dirs = absl::StrSplit(value, ',', absl::SkipEmpty());
  for (const std::string& d : dirs) {
    if (d.empty() || d[0] != '/') {
      return absl::InvalidArgumentError(
          absl::StrCat("nvme_dirs: '", d, "' is not an absolute directory path"));
    }
  }
  *out = std::move(dirs);
  return absl::OkStatus();
}

const std::map<std::string, Setter>& Setters() {
  static const auto* setters = new std::map<std::string, Setter>{
      {"socket", [](const std::string& v, ServerConfig* c) {
         if (v.empty()) return absl::InvalidArgumentError("socket: path must not be empty");
         c->socket_path = v;
         return absl::OkStatus();
       }},
      {"socket_group", [](const std::string& v, ServerConfig* c) {
         c->socket_group = v;
         return absl::OkStatus();
       }},
      {"pinned_bytes", [](const std::string& v, ServerConfig* c) {
         return SetSize("pinned_bytes", v, &c->pinned_bytes);
       }},
      {"segment_bytes", [](const std::string& v, ServerConfig* c) {
         return SetSize("segment_bytes", v, &c->segment_bytes);
       }},
      {"job_pinned_quota", [](const std::string& v, ServerConfig* c) {
         return SetSize("job_pinned_quota", v, &c->job_pinned_quota);
       }},
      {"max_message_bytes", [](const std::string& v, ServerConfig* c) {
         return SetSize("max_message_bytes", v, &c->max_message_bytes);
       }},
      {"job_grace", [](const std::string& v, ServerConfig* c) {
         return SetDuration("job_grace", v, &c->job_grace);
       }},
      {"attach_timeout", [](const std::string& v, ServerConfig* c) {
         return SetDuration("attach_timeout", v, &c->attach_timeout);
       }},
      {"shutdown_timeout", [](const std::string& v, ServerConfig* c) {
         return SetDuration("shutdown_timeout", v, &c->shutdown_timeout);
       }},
      {"huge_pages", [](const std::string& v, ServerConfig* c) {
         if (v == "auto") c->huge_pages = storage::HugePageMode::kAuto;
         else if (v == "on") c->huge_pages = storage::HugePageMode::kOn;
         else if (v == "off") c->huge_pages = storage::HugePageMode::kOff;
         else return absl::InvalidArgumentError(
                  absl::StrCat("huge_pages: '", v, "' is not one of auto, on, off"));
         return absl::OkStatus();
       }},
      {"stream_dispatch", [](const std::string& v, ServerConfig* c) {
         if (v == "inline") c->stream_inline = true;
         else if (v == "pool") c->stream_inline = false;
         else return absl::InvalidArgumentError(
                  absl::StrCat("stream_dispatch: '", v, "' is not one of inline, pool"));
         return absl::OkStatus();
       }},
      {"metrics_address", [](const std::string& v, ServerConfig* c) {
         if (v.empty()) {  // Explicitly off.
           c->metrics_address.clear();
           return absl::OkStatus();
         }
         auto parsed = ParseHostPort(v);
         if (!parsed.ok()) {
           return absl::InvalidArgumentError(
               absl::StrCat("metrics_address: ", parsed.status().message()));
         }
         c->metrics_address = v;
         return absl::OkStatus();
       }},
      {"worker_threads", [](const std::string& v, ServerConfig* c) {
         return SetInt("worker_threads", v, 1, 1024, &c->worker_threads);
       }},
      {"parent_pid", [](const std::string& v, ServerConfig* c) {
         return SetInt("parent_pid", v, 1, std::numeric_limits<int>::max(), &c->parent_pid);
       }},
      {"nvme_dirs", [](const std::string& v, ServerConfig* c) {
         return SetDirs(v, &c->nvme_dirs);
       }},
      {"manifest_dir", [](const std::string& v, ServerConfig* c) {
         if (v.empty() || v[0] != '/') {
           return absl::InvalidArgumentError(
               absl::StrCat("manifest_dir: '", v, "' is not an absolute directory path"));
         }
         c->manifest_dir = v;
         return absl::OkStatus();
       }},
      {"nvme_capacity", [](const std::string& v, ServerConfig* c) {
         return SetSize("nvme_capacity", v, &c->nvme_capacity);
       }},
      {"job_nvme_quota", [](const std::string& v, ServerConfig* c) {
         return SetSize("job_nvme_quota", v, &c->job_nvme_quota);
       }},
      {"aio_block_size", [](const std::string& v, ServerConfig* c) {
         uint64_t size = 0;
         SPILL_RETURN_IF_ERROR(SetSize("aio_block_size", v, &size));
         if (size == 0 || size % 4096 != 0 || size > (64u << 20)) {
           return absl::InvalidArgumentError(absl::StrCat(
               "aio_block_size: ", v, " is not a multiple of 4KiB within [4KiB, 64MiB]"));
         }
         c->aio_block_size = static_cast<uint32_t>(size);
         return absl::OkStatus();
       }},
      {"aio_queue_depth", [](const std::string& v, ServerConfig* c) {
         return SetInt("aio_queue_depth", v, 1, 4096, &c->aio_queue_depth);
       }},
      {"aio_thread_count", [](const std::string& v, ServerConfig* c) {
         return SetInt("aio_thread_count", v, 1, 64, &c->aio_thread_count);
       }},
      {"aio_single_submit", [](const std::string& v, ServerConfig* c) {
         return SetBool("aio_single_submit", v, &c->aio_single_submit);
       }},
      {"aio_overlap_events", [](const std::string& v, ServerConfig* c) {
         return SetBool("aio_overlap_events", v, &c->aio_overlap_events);
       }},
      {"nvme_sqpoll", [](const std::string& v, ServerConfig* c) {
         return SetBool("nvme_sqpoll", v, &c->nvme_sqpoll);
       }},
      {"optim_threads", [](const std::string& v, ServerConfig* c) {
         return SetInt("optim_threads", v, 0, 1024, &c->optim_threads);
       }},
      {"optim_threads_per_job", [](const std::string& v, ServerConfig* c) {
         return SetInt("optim_threads_per_job", v, 0, 1024, &c->optim_threads_per_job);
       }},
      {"optim_concurrency", [](const std::string& v, ServerConfig* c) {
         return SetInt("optim_concurrency", v, 1, 256, &c->optim_concurrency);
       }},
      {"optim_nice", [](const std::string& v, ServerConfig* c) {
         return SetInt("optim_nice", v, 0, 19, &c->optim_nice);
       }},
  };
  return *setters;
}

std::string NormalizeKey(std::string key) { return absl::StrReplaceAll(key, {{"-", "_"}}); }

absl::Status Apply(const std::string& raw_key, const std::string& value, const std::string& where,
                   ServerConfig* config) {
  const std::string key = NormalizeKey(raw_key);
  auto it = Setters().find(key);
  if (it == Setters().end()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": unknown setting '", raw_key,
                                                   "' (see spilld --help)"));
  }
  absl::Status s = it->second(value, config);
  if (!s.ok()) return absl::InvalidArgumentError(absl::StrCat(where, ": ", s.message()));
  return absl::OkStatus();
}

absl::Status Validate(const ServerConfig& c) {
  if (c.socket_path.empty()) {
    return absl::InvalidArgumentError("--socket=PATH is required (or \"socket\" in --config)");
  }
  if (c.pinned_bytes == 0) {
    return absl::InvalidArgumentError(
        "--pinned-bytes=SIZE is required and must be positive (e.g. 512MiB, 64GiB)");
  }
  if (c.segment_bytes == 0) return absl::InvalidArgumentError("--segment-bytes must be positive");
  if (!c.nvme_dirs.empty() && c.nvme_capacity == 0) {
    return absl::InvalidArgumentError(
        "--nvme-capacity=SIZE (per directory) is required with --nvme-dirs");
  }
  if (!c.manifest_dir.empty() && c.nvme_dirs.empty()) {
    return absl::InvalidArgumentError("--manifest-dir needs --nvme-dirs (the NVMe tier)");
  }
  if (c.max_message_bytes < 4096 || c.max_message_bytes > (64u << 20)) {
    return absl::InvalidArgumentError("--max-message-bytes must be within [4KiB, 64MiB]");
  }
  return absl::OkStatus();
}

}  // namespace

std::vector<std::string> ConfigKeys() {
  std::vector<std::string> keys;
  for (const auto& [key, setter] : Setters()) keys.push_back(key);
  return keys;
}

std::string DescribeConfig(const ServerConfig& c) {
  const char* huge = c.huge_pages == storage::HugePageMode::kAuto ? "auto"
                     : c.huge_pages == storage::HugePageMode::kOn ? "on"
                                                                  : "off";
  return absl::StrCat(
      "socket=", c.socket_path, "\nsocket_group=", c.socket_group,
      "\npinned_bytes=", c.pinned_bytes, "\nsegment_bytes=", c.segment_bytes,
      "\nhuge_pages=", huge, "\njob_pinned_quota=", c.job_pinned_quota,
      "\njob_grace=", c.job_grace.count(), "ms\nattach_timeout=", c.attach_timeout.count(),
      "ms\nshutdown_timeout=", c.shutdown_timeout.count(), "ms\nworker_threads=",
      c.worker_threads, "\nstream_dispatch=", c.stream_inline ? "inline" : "pool",
      "\nmax_message_bytes=", c.max_message_bytes,
      "\nmetrics_address=", c.metrics_address.empty() ? "off" : c.metrics_address, "\n");
}

std::string ConfigUsage() {
  return R"(usage: spilld --socket=PATH --pinned-bytes=SIZE [options]

  --socket=PATH            Unix socket to listen on (0660, in a 0750 directory)
  --socket-group=NAME      group owning the socket (training users); default: spilld's
  --pinned-bytes=SIZE      pinned-CPU tier size, e.g. 512MiB, 64GiB (mlocked at start)
  --segment-bytes=SIZE     memfd segment size = largest object (default 1GiB)
  --huge-pages=auto|on|off 2 MiB pages for segments (default auto)
  --job-pinned-quota=SIZE  pinned bytes one job may hold (default: whole pool)
  --job-grace=DURATION     how long a job without sessions keeps its objects (default 5m)
  --attach-timeout=DUR     how long an opened session may wait to attach (default 30s)
  --shutdown-timeout=DUR   SIGTERM: time given to in-flight requests (default 10s)
  --worker-threads=N       request worker pool size (default 4)
  --nvme-dirs=DIR[,DIR]    NVMe tier: one directory per device (objects are
                           striped across them); off when not given
  --nvme-capacity=SIZE     bytes preallocated in each NVMe directory
  --job-nvme-quota=SIZE    NVMe bytes one job may hold (default: no limit)
  --manifest-dir=DIR       where the manifest of NVMe-homed objects is kept, so
                           they survive a restart (default: the first NVMe dir)
  --aio-block-size=SIZE    NVMe request and checksum block (DeepSpeed aio.block_size;
                           default 1MiB)
  --aio-queue-depth=N      requests in flight per ring (aio.queue_depth; default 32)
  --aio-thread-count=N     io_uring rings, each with a completion thread
                           (aio.thread_count; default 1)
  --aio-single-submit=BOOL one request per submission call (aio.single_submit)
  --aio-overlap-events=BOOL keep submitting while completions are reaped
                           (aio.overlap_events; default true)
  --nvme-sqpoll=BOOL       kernel submission-queue polling (default false)
  --optim-threads=N        CPU optimizer threads (default 0: one per CPU)
  --optim-threads-per-job=N  most optimizer threads one job's step may use
                           (default 0: all of them)
  --optim-concurrency=N    optimizer groups stepping at once (default 4)
  --parent-pid=PID         stop as on SIGTERM when process PID, which must be
                           spilld's parent (the thread that started it), exits;
                           for a spilld that a test or benchmark starts
  --stream-dispatch=inline|pool  run non-blocking stream requests on the
                           reactor thread (inline, default) or the pool
  --max-message-bytes=SIZE largest accepted gRPC message (default 64KiB)
  --metrics-address=HOST:PORT  serve Prometheus metrics on http://HOST:PORT/metrics
                           (default: off; port 0 picks a free port, logged at start)
  --config=FILE            JSON file with the same keys ("pinned_bytes": "64GiB");
                           flags override it
  --validate               check the flags and file, print the settings, exit
Sizes take B, KiB, MiB, GiB, TiB (or KB, MB, GB, TB); durations ms, s, m, h.
)";
}

absl::Status ApplyConfigJson(const std::string& text, const std::string& source,
                             ServerConfig* config) {
  nlohmann::json doc = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": not valid JSON"));
  }
  if (!doc.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": top level must be an object"));
  }
  ServerConfig staged = *config;  // All or nothing.
  for (const auto& [key, value] : doc.items()) {
    std::string text_value;
    if (value.is_string()) text_value = value.get<std::string>();
    else if (value.is_number_unsigned()) text_value = std::to_string(value.get<uint64_t>());
    else if (value.is_number_integer()) text_value = std::to_string(value.get<int64_t>());
    else if (value.is_boolean()) text_value = value.get<bool>() ? "true" : "false";
    else {
      return absl::InvalidArgumentError(absl::StrCat(
          source, ": key '", key, "' must be a string, an integer or a boolean, got ",
          value.type_name()));
    }
    SPILL_RETURN_IF_ERROR(Apply(key, text_value, source, &staged));
  }
  *config = staged;
  return absl::OkStatus();
}

absl::StatusOr<ServerConfig> ParseConfig(const std::vector<std::string>& args, bool* help) {
  *help = false;
  std::vector<std::pair<std::string, std::string>> flags;
  ServerConfig config;
  for (size_t i = 1; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg == "--help" || arg == "-h") {
      *help = true;
      return config;
    }
    if (arg == "--validate") {
      config.validate_only = true;
      continue;
    }
    if (arg.rfind("--", 0) != 0 || arg.find('=') == std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("argument '", arg, "' is not of the form --name=value"));
    }
    size_t eq = arg.find('=');
    std::string name = arg.substr(2, eq - 2);
    std::string value = arg.substr(eq + 1);
    if (name == "config") config.config_file = value;
    else flags.emplace_back(name, value);
  }
  if (!config.config_file.empty()) {
    std::ifstream in(config.config_file);
    if (!in) {
      return absl::NotFoundError(
          absl::StrCat("--config: cannot read '", config.config_file, "'"));
    }
    std::stringstream buffer;
    buffer << in.rdbuf();
    SPILL_RETURN_IF_ERROR(ApplyConfigJson(buffer.str(), config.config_file, &config));
  }
  for (const auto& [name, value] : flags) {
    SPILL_RETURN_IF_ERROR(Apply(name, value, absl::StrCat("--", name), &config));
  }
  SPILL_RETURN_IF_ERROR(Validate(config));
  return config;
}

}  // namespace spill::server
