// On a GPU machine: the client registers spilld's segments with CUDA, and
// bytes copied to the GPU from one object and back into another arrive
// intact. Skips with a message where there is no CUDA device.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cstring>

#include "spill/client.h"
#include "tests/integration/spilld_process.h"

namespace spill::testing {
namespace {

using std::chrono::seconds;

bool HaveDevice() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

TEST(ClientCudaTest, SegmentsAreRegisteredAndCopiesRoundTrip) {
  if (!HaveDevice()) GTEST_SKIP() << "no CUDA device: run the gpu label on a GPU machine";
  auto d = SpilldProcess::Start({"--pinned-bytes=256MiB", "--segment-bytes=128MiB"});
  ASSERT_TRUE(d.ok()) << d.status();
  client::SessionOptions options;
  options.socket_path = (*d)->socket_path();
  options.job_id = "gpu";
  auto s = client::Session::Open(options);
  ASSERT_TRUE(s.ok()) << s.status();
  const int64_t n = 16 << 20;  // 16 Mi bf16 values: 32 MiB.
  auto src = (*s)->Register("src", client::ObjectKind::kParamShard, client::DType::kBFloat16, n);
  auto dst = (*s)->Register("dst", client::ObjectKind::kGradShard, client::DType::kBFloat16, n);
  ASSERT_TRUE(src.ok() && dst.ok());
  auto a = (*s)->Acquire(src->object_id)->Get(seconds(10));
  auto b = (*s)->Acquire(dst->object_id)->Get(seconds(10));
  ASSERT_TRUE(a.ok() && b.ok());
  auto in = (*s)->Data<uint16_t>(*a);
  auto out = (*s)->Data<uint16_t>(*b);
  ASSERT_TRUE(in.ok() && out.ok());
  for (int64_t i = 0; i < n; ++i) (*in)[i] = static_cast<uint16_t>(i * 2654435761u >> 16);
  std::memset(out->data(), 0, out->size() * 2);

  client::MappingStats stats = (*s)->mapping_stats();
  EXPECT_TRUE(stats.cuda_compiled);
  EXPECT_GT(stats.cuda_registered_bytes, 0u) << stats.cuda_skip_reason;
  // A registered range reports as host memory CUDA can DMA from directly.
  cudaPointerAttributes attr{};
  ASSERT_EQ(cudaPointerGetAttributes(&attr, in->data()), cudaSuccess);
  EXPECT_EQ(attr.type, cudaMemoryTypeHost);

  void* device = nullptr;
  ASSERT_EQ(cudaMalloc(&device, n * 2), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(device, in->data(), n * 2, cudaMemcpyHostToDevice), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(out->data(), device, n * 2, cudaMemcpyDeviceToHost), cudaSuccess);
  cudaFree(device);
  EXPECT_EQ(std::memcmp(in->data(), out->data(), n * 2), 0);
  ASSERT_TRUE((*s)->Close().ok());
  EXPECT_EQ((*d)->Stop(), 0);
}

}  // namespace
}  // namespace spill::testing
