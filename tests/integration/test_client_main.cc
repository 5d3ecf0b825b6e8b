// A worker stand-in for the kill test: opens a session of the job named on
// the command line, registers and pins an object, writes into it, prints
// "ready" and blocks until killed.
#include <unistd.h>

#include <cstdio>
#include <cstring>

#include "spill/client.h"

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s SOCKET JOB\n", argv[0]);
    return 2;
  }
  spill::client::SessionOptions options;
  options.socket_path = argv[1];
  options.job_id = argv[2];
  auto session = spill::client::Session::Open(options);
  if (!session.ok()) {
    std::fprintf(stderr, "open: %s\n", session.status().ToString().c_str());
    return 1;
  }
  auto obj = (*session)->Register("held", spill::client::ObjectKind::kParamShard,
                                  spill::client::DType::kFloat32, 4096);
  if (!obj.ok()) return 1;
  auto pinned = (*session)->Acquire(obj->object_id)->Get();
  if (!pinned.ok()) return 1;
  auto bytes = (*session)->Bytes(*pinned);
  if (!bytes.ok()) return 1;
  std::memset(bytes->data(), 0x11, bytes->size());
  std::printf("ready\n");
  std::fflush(stdout);
  for (;;) pause();
}
