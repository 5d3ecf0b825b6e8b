// One process with LibTorch and libspill_client talking to a real spilld:
// a torch tensor goes into an object's shared-memory slot and comes back.
#include <ATen/ATen.h>

#include <cstring>

#include "gtest/gtest.h"
#include "spill/client.h"
#include "worker/testing/spilld_fixture.h"

namespace spill::worker {
namespace {

using spill::client::DType;
using spill::client::ObjectInfo;
using spill::client::ObjectKind;
using spill::client::Session;
using spill::client::SessionOptions;

constexpr std::chrono::seconds kWait(30);

TEST(TorchSpilldTest, TensorRoundTripThroughSpilldSlot) {
  auto spilld = testing::SpilldFixture::Start();
  ASSERT_TRUE(spilld.ok()) << spilld.status();
  SessionOptions options;
  options.socket_path = (*spilld)->socket_path();
  options.job_id = "torch-round-trip";
  options.register_with_cuda = false;
  auto session = Session::Open(options);
  ASSERT_TRUE(session.ok()) << session.status();

  const int64_t n = 4096;
  at::Tensor param = at::randn({n}).to(at::kBFloat16);
  auto info = (*session)->Register("layer0.param", ObjectKind::kParamShard, DType::kBFloat16, n);
  ASSERT_TRUE(info.ok()) << info.status();

  // Write: acquire, copy the tensor into the slot, write back, release.
  auto pinned = (*session)->Acquire(info->object_id)->Get(kWait);
  ASSERT_TRUE(pinned.ok()) << pinned.status();
  auto slot = (*session)->Data<at::BFloat16>(*pinned);
  ASSERT_TRUE(slot.ok()) << slot.status();
  ASSERT_EQ(static_cast<int64_t>(slot->size()), n);
  at::Tensor view = at::from_blob(slot->data(), {n}, at::TensorOptions().dtype(at::kBFloat16));
  view.copy_(param);
  ASSERT_TRUE((*session)->WriteBack(info->object_id, 1)->Wait(kWait).ok());
  ASSERT_TRUE((*session)->Release(info->object_id)->Wait(kWait).ok());

  // Read back into a fresh tensor through a second acquire.
  auto again = (*session)->Acquire(info->object_id)->Get(kWait);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->version, 1u);
  auto bytes = (*session)->Bytes(*again);
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  at::Tensor back = at::empty({n}, at::kBFloat16);
  std::memcpy(back.data_ptr(), bytes->data(), bytes->size());
  EXPECT_TRUE(back.equal(param));
  // A float view of a bf16 object is refused, naming both types.
  EXPECT_FALSE((*session)->Data<float>(*again).ok());
  ASSERT_TRUE((*session)->Release(info->object_id)->Wait(kWait).ok());
  EXPECT_TRUE((*session)->Close().ok());
  EXPECT_EQ((*spilld)->Stop(), 0) << (*spilld)->output();
}

}  // namespace
}  // namespace spill::worker
