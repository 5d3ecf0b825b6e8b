// Checkpoint and restore of optimizer state kept on NVMe, through a real
// spilld (a real NVMe tier under $SPILL_TEST_NVME_DIR, else /var/tmp;
// skipped without O_DIRECT) and the client library: a member's master and
// Adam moments exported over the wire equal those of a pinned twin group,
// and imported into a fresh group resumed at the same step they step on
// exactly like the twin. Refused copies name what is wrong.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "spill/client.h"
#include "tests/integration/spilld_process.h"

namespace spill::testing {
namespace {

using client::DType;
using client::GroupStateDirection;
using client::ObjectHome;
using client::ObjectInfo;
using client::ObjectKind;
using client::Session;
using std::chrono::seconds;

constexpr uint64_t kN = 10'000;  // Three pieces of 4096 elements.

uint16_t TruncatedBF16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return static_cast<uint16_t>(u >> 16);
}

class GroupStateTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::string> dir = MakeNvmeScratchDir("spill-groupstate-it");
    if (absl::IsFailedPrecondition(dir.status())) GTEST_SKIP() << dir.status().message();
    ASSERT_TRUE(dir.ok()) << dir.status();
    dir_ = *dir;
    std::filesystem::create_directories(dir_ + "/nvme");
    auto d = SpilldProcess::Start({"--pinned-bytes=16MiB", "--segment-bytes=4MiB",
                                   "--nvme-dirs=" + dir_ + "/nvme", "--nvme-capacity=64MiB",
                                   "--job-grace=2m", "--optim-threads=2"});
    ASSERT_TRUE(d.ok()) << d.status();
    daemon_ = std::move(*d);
    client::SessionOptions options;
    options.socket_path = daemon_->socket_path();
    options.job_id = "ckpt";
    options.timeout = seconds(60);
    auto s = Session::Open(options);
    ASSERT_TRUE(s.ok()) << s.status();
    s_ = std::move(*s);
  }
  void TearDown() override {
    if (s_) {
      EXPECT_TRUE(s_->Close().ok());
    }
    if (daemon_) {
      EXPECT_EQ(daemon_->Stop(), 0) << daemon_->output();
    }
    std::error_code ec;
    if (!dir_.empty()) std::filesystem::remove_all(dir_, ec);
  }

  // Registers and acquires (held until the session closes).
  ObjectInfo Held(const std::string& name, ObjectKind kind, DType dtype) {
    auto obj = s_->Register(name, kind, dtype, kN);
    EXPECT_TRUE(obj.ok()) << obj.status();
    auto held = s_->Acquire(obj.value_or(ObjectInfo{}).object_id)->Get(seconds(30));
    EXPECT_TRUE(held.ok()) << held.status();
    return held.value_or(ObjectInfo{});
  }
  // Three fp32 checkpoint buffers (master, exp_avg, exp_avg_sq).
  std::vector<ObjectInfo> Buffers(const std::string& prefix) {
    std::vector<ObjectInfo> out;
    for (int a = 0; a < 3; ++a) {
      out.push_back(Held(prefix + std::to_string(a), a == 0 ? ObjectKind::kMaster
                                                            : ObjectKind::kMoment,
                         DType::kFloat32));
    }
    return out;
  }
  static std::vector<uint64_t> Ids(const std::vector<ObjectInfo>& objects) {
    std::vector<uint64_t> ids;
    for (const ObjectInfo& o : objects) ids.push_back(o.object_id);
    return ids;
  }
  std::vector<uint8_t> Bytes(const std::vector<ObjectInfo>& objects) {
    std::vector<uint8_t> out;
    for (const ObjectInfo& o : objects) {
      auto span = s_->Bytes(o);
      EXPECT_TRUE(span.ok()) << span.status();
      if (span.ok()) out.insert(out.end(), span->begin(), span->end());
    }
    return out;
  }
  // The pinned group's own master and moments, acquired.
  std::vector<ObjectInfo> OwnState(const client::GroupInfo& g) {
    std::vector<uint64_t> ids = {g.members[0].master_object_id};
    ids.insert(ids.end(), g.members[0].state_object_ids.begin(),
               g.members[0].state_object_ids.end());
    std::vector<ObjectInfo> out;
    for (uint64_t id : ids) out.push_back(s_->Acquire(id)->Get(seconds(30)).value());
    return out;
  }
  client::GroupInfo Create(const std::string& name, const ObjectInfo& param,
                           const ObjectInfo& grad, bool nvme, uint64_t resume_step) {
    client::GroupSpec spec;
    spec.name = name;
    spec.params.weight_decay = 0.01f;
    spec.members.push_back({param.object_id, grad.object_id});
    spec.states_on_nvme = nvme;
    spec.sub_group_size = 4096;
    spec.resume_step = resume_step;
    spec.resume_applied_steps = resume_step;
    auto group = s_->CreateGroup(spec);
    EXPECT_TRUE(group.ok()) << group.status();
    return group.value_or(client::GroupInfo{});
  }
  // Writes one random gradient into every grad object and steps each group.
  void Step(uint64_t step, const std::vector<std::pair<uint64_t, ObjectInfo>>& groups) {
    std::normal_distribution<float> dist(0, 0.1f);
    std::vector<uint16_t> g(kN);
    for (uint16_t& v : g) v = TruncatedBF16(dist(rng_));
    for (const auto& [group_id, grad] : groups) {
      std::memcpy(s_->Bytes(grad)->data(), g.data(), kN * 2);
      auto ready = s_->GradReady(group_id, grad.object_id, step, 0);
      ASSERT_TRUE(ready->Wait(seconds(30)).ok()) << ready->status();
      auto work = s_->OptimizerStep(group_id, step, 1e-2f, 1.0f, false);
      ASSERT_TRUE(work->Wait(seconds(60)).ok()) << work->status();
      ASSERT_TRUE(work->step_outcome().applied);
    }
  }

  std::string dir_;
  std::unique_ptr<SpilldProcess> daemon_;
  std::unique_ptr<Session> s_;
  std::mt19937 rng_{11};
};

TEST_F(GroupStateTest, ExportImportRoundTripThroughTheWire) {
  ObjectInfo params[3], grads[3];
  for (int g = 0; g < 3; ++g) {
    params[g] = Held("p" + std::to_string(g), ObjectKind::kParamShard, DType::kBFloat16);
    grads[g] = Held("g" + std::to_string(g), ObjectKind::kGradShard, DType::kBFloat16);
  }
  std::normal_distribution<float> dist(0, 1);
  auto p0 = s_->Data<uint16_t>(params[0]).value();
  for (uint64_t i = 0; i < kN; ++i) p0[i] = TruncatedBF16(dist(rng_));
  std::memcpy(s_->Bytes(params[1])->data(), p0.data(), kN * 2);
  const client::GroupInfo pinned = Create("pinned", params[0], grads[0], false, 0);
  const client::GroupInfo nvme = Create("nvme", params[1], grads[1], true, 0);
  ASSERT_TRUE(nvme.states_on_nvme);
  for (uint64_t step = 1; step <= 2; ++step) {
    Step(step, {{pinned.group_id, grads[0]}, {nvme.group_id, grads[1]}});
  }
  // Export: bit for bit the pinned twin's master and moments.
  const std::vector<ObjectInfo> saved = Buffers("ck");
  absl::Status exported =
      s_->CopyGroupState(nvme.group_id, 0, GroupStateDirection::kExport, Ids(saved));
  ASSERT_TRUE(exported.ok()) << exported;
  const std::vector<ObjectInfo> twin = OwnState(pinned);
  EXPECT_EQ(Bytes(saved), Bytes(twin));
  // Import into a fresh NVMe group resumed at step 2; step 3 matches.
  std::memcpy(s_->Bytes(params[2])->data(), p0.data(), kN * 2);
  const client::GroupInfo resumed = Create("resumed", params[2], grads[2], true, 2);
  absl::Status imported =
      s_->CopyGroupState(resumed.group_id, 0, GroupStateDirection::kImport, Ids(saved));
  ASSERT_TRUE(imported.ok()) << imported;
  const std::vector<ObjectInfo> check = Buffers("chk");
  ASSERT_TRUE(
      s_->CopyGroupState(resumed.group_id, 0, GroupStateDirection::kExport, Ids(check)).ok());
  EXPECT_EQ(Bytes(check), Bytes(saved));
  Step(3, {{pinned.group_id, grads[0]}, {resumed.group_id, grads[2]}});
  EXPECT_EQ(std::memcmp(s_->Bytes(params[2])->data(), p0.data(), kN * 2), 0);
  ASSERT_TRUE(
      s_->CopyGroupState(resumed.group_id, 0, GroupStateDirection::kExport, Ids(check)).ok());
  EXPECT_EQ(Bytes(check), Bytes(twin));
  auto groups = s_->ListGroups();
  ASSERT_TRUE(groups.ok());
  for (const client::GroupInfo& g : *groups) {
    if (g.group_id == resumed.group_id) {
      EXPECT_EQ(g.applied_steps, 3u);
    }
  }
}

TEST_F(GroupStateTest, RefusedCopiesNameWhatIsWrong) {
  ObjectInfo param = Held("p", ObjectKind::kParamShard, DType::kBFloat16);
  ObjectInfo grad = Held("g", ObjectKind::kGradShard, DType::kBFloat16);
  const client::GroupInfo nvme = Create("nvme", param, grad, true, 0);
  const std::vector<ObjectInfo> ok = Buffers("ok");
  ASSERT_TRUE(s_->CopyGroupState(nvme.group_id, 0, GroupStateDirection::kExport, Ids(ok)).ok());
  const std::vector<uint8_t> state = Bytes(ok);
  auto code = [&](uint64_t group, uint32_t member, GroupStateDirection d,
                  std::vector<uint64_t> ids, absl::StatusCode want, const std::string& needle) {
    absl::Status s = s_->CopyGroupState(group, member, d, ids);
    EXPECT_EQ(s.code(), want) << s;
    EXPECT_NE(s.message().find(needle), std::string::npos) << s << " lacks " << needle;
  };
  std::vector<uint64_t> ids = Ids(Buffers("x"));
  code(nvme.group_id + 100, 0, GroupStateDirection::kExport, ids, absl::StatusCode::kNotFound,
       "no optimizer group");
  code(nvme.group_id, 3, GroupStateDirection::kExport, ids, absl::StatusCode::kNotFound,
       "no member 3");
  code(nvme.group_id, 0, GroupStateDirection::kImport, {ids[0]},
       absl::StatusCode::kInvalidArgument, "needs 3 object ids");
  code(nvme.group_id, 0, static_cast<GroupStateDirection>(0), ids,
       absl::StatusCode::kInvalidArgument, "kExport or kImport");
  // An NVMe-homed fp32 object cannot be a checkpoint buffer.
  auto on_nvme = s_->Register("on_nvme", ObjectKind::kOther, DType::kFloat32, kN,
                              ObjectHome::kNvme);
  ASSERT_TRUE(on_nvme.ok()) << on_nvme.status();
  code(nvme.group_id, 0, GroupStateDirection::kImport, {ids[0], ids[1], on_nvme->object_id},
       absl::StatusCode::kFailedPrecondition, "home NVME");
  auto bf16 = Held("bf16", ObjectKind::kOther, DType::kBFloat16);
  code(nvme.group_id, 0, GroupStateDirection::kImport, {bf16.object_id, ids[1], ids[2]},
       absl::StatusCode::kInvalidArgument, "'bf16'");
  // Over raw gRPC, an unspecified direction is refused by spilld itself.
  spill::v1::OpenSessionRequest open;
  open.set_job_id("raw");
  open.set_world_size(1);
  spill::v1::OpenSessionResponse opened;
  grpc::ClientContext open_ctx;
  ASSERT_TRUE(daemon_->worker().OpenSession(&open_ctx, open, &opened).ok());
  spill::v1::CopyGroupStateRequest raw;
  *raw.mutable_session() = opened.session();
  raw.set_group_id(1);
  for (uint64_t id : ids) raw.add_object_ids(id);
  spill::v1::CopyGroupStateResponse raw_response;
  grpc::ClientContext raw_ctx;
  grpc::Status refused = daemon_->worker().CopyGroupState(&raw_ctx, raw, &raw_response);
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(refused.error_message().find("not EXPORT or IMPORT"), std::string::npos)
      << refused.error_message();
  // The state is as it was.
  ASSERT_TRUE(s_->CopyGroupState(nvme.group_id, 0, GroupStateDirection::kExport, Ids(ok)).ok());
  EXPECT_EQ(Bytes(ok), state);
}

}  // namespace
}  // namespace spill::testing
