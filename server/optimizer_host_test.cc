#include "server/optimizer_host.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "common/dtype.h"
#include "storage/pinned_arena.h"

namespace spill::server {
namespace {

using std::chrono::milliseconds;

constexpr int kF32 = 1;
constexpr int kBF16 = 3;
constexpr int kI32 = 7;
constexpr int kParam = 1;
constexpr int kGrad = 2;

uint16_t ToBF16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  bits += 0x7fff + ((bits >> 16) & 1);
  return static_cast<uint16_t>(bits >> 16);
}

class OptimizerHostTest : public ::testing::Test {
 protected:
  void SetUp() override { Make(0); }

  void Make(uint64_t quota) {
    host_.reset();
    registry_.reset();
    storage::ArenaOptions arena_options;
    arena_options.total_bytes = 8 << 20;
    arena_options.segment_bytes = 1 << 20;
    arena_options.huge_pages = storage::HugePageMode::kOff;
    arena_options.lock = false;
    arena_ = storage::PinnedArena::Create(arena_options).value();
    RegistryOptions options;
    options.job_grace = milliseconds(1000);
    options.job_pinned_quota = quota;
    registry_ = std::make_unique<Registry>(arena_.get(), options, [this] { return now_; });
    OptimizerHostOptions host_options;
    host_options.threads = 2;
    host_ = std::make_unique<OptimizerHost>(registry_.get(), host_options);
    session_ = Open("job");
  }

  OpenedSession Open(const std::string& job) {
    auto s = registry_->OpenSession(job, 0, 1, PeerCreds{42, 1000, 1000});
    EXPECT_TRUE(s.ok()) << s.status();
    EXPECT_TRUE(registry_->AttachStream(s->session_id, s->token).ok());
    return *s;
  }

  // A parameter and gradient pair of n elements with random contents.
  GroupMemberSpec Pair(const std::string& name, uint64_t n, int param_dtype = kBF16,
                       int grad_dtype = kBF16) {
    auto p = registry_->RegisterObject(session_.session_id, session_.token, name + ".p", kParam,
                                       param_dtype, n);
    auto g = registry_->RegisterObject(session_.session_id, session_.token, name + ".g", kGrad,
                                       grad_dtype, n);
    EXPECT_TRUE(p.ok() && g.ok());
    FillRandom(*p, 1.0f);
    FillRandom(*g, 0.01f);
    return {p->id, g->id};
  }

  void FillRandom(const ObjectRecord& r, float scale) {
    std::normal_distribution<float> dist(0.0f, scale);
    uint8_t* data = arena_->Data(r.extent);
    for (uint64_t i = 0; i < r.num_elements; ++i) {
      float v = dist(rng_);
      if (r.dtype == kBF16) {
        uint16_t b = ToBF16(v);
        std::memcpy(data + 2 * i, &b, 2);
      } else if (r.dtype == kF32) {
        std::memcpy(data + 4 * i, &v, 4);
      }
    }
  }

  ObjectRecord Record(uint64_t id) {
    auto list = registry_->ListObjects(session_.session_id, session_.token).value();
    for (const ObjectRecord& r : list) {
      if (r.id == id) return r;
    }
    ADD_FAILURE() << "no object " << id;
    return {};
  }

  std::vector<uint8_t> Bytes(uint64_t id) {
    ObjectRecord r = Record(id);
    const uint8_t* p = arena_->Data(r.extent);
    return std::vector<uint8_t>(p, p + r.extent.size);
  }

  // Every byte of every object of the job, to prove that nothing changed.
  std::vector<std::vector<uint8_t>> Snapshot() {
    std::vector<std::vector<uint8_t>> out;
    std::vector<ObjectRecord> list =
        registry_->ListObjects(session_.session_id, session_.token).value();
    for (const ObjectRecord& r : list) out.push_back(Bytes(r.id));
    return out;
  }

  GroupSpec Spec(std::vector<GroupMemberSpec> members, uint32_t gas = 1) {
    GroupSpec spec;
    spec.name = "g";
    spec.hyper.algo = optim::Algo::kAdamW;
    spec.hyper.lr = 1e-3f;
    spec.hyper.weight_decay = 0.01f;
    spec.gradient_accumulation_steps = gas;
    spec.members = std::move(members);
    return spec;
  }

  GroupInfo Create(const GroupSpec& spec) {
    auto created = host_->CreateGroup(session_.session_id, session_.token, spec);
    EXPECT_TRUE(created.ok()) << created.status();
    EXPECT_FALSE(created->second);
    return created->first;
  }

  size_t ObjectCount() {
    return registry_->ListObjects(session_.session_id, session_.token).value().size();
  }

  std::chrono::steady_clock::time_point now_{};
  std::mt19937 rng_{7};
  std::unique_ptr<storage::PinnedArena> arena_;
  std::unique_ptr<Registry> registry_;
  std::unique_ptr<OptimizerHost> host_;
  OpenedSession session_;
};

TEST_F(OptimizerHostTest, CreateAllocatesMasterFromParamAndZeroStates) {
  GroupMemberSpec m = Pair("a", 1000);
  GroupInfo g = Create(Spec({m}));
  ASSERT_EQ(g.members.size(), 1u);
  const GroupMemberInfo& info = g.members[0];
  EXPECT_EQ(info.state_object_ids.size(), 2u);  // AdamW: m and v.
  EXPECT_EQ(info.accumulator_object_id, 0u);
  std::vector<uint8_t> param = Bytes(m.param_object_id);
  std::vector<uint8_t> master = Bytes(info.master_object_id);
  for (size_t i = 0; i < 1000; ++i) {
    uint32_t widened = uint32_t{param[2 * i]} << 16 | uint32_t{param[2 * i + 1]} << 24;
    uint32_t got;
    std::memcpy(&got, master.data() + 4 * i, 4);
    ASSERT_EQ(got, widened) << "element " << i;
  }
  for (uint64_t id : info.state_object_ids) {
    for (uint8_t b : Bytes(id)) ASSERT_EQ(b, 0);
  }
}

TEST_F(OptimizerHostTest, StepMatchesTheKernelOnCopiesAndIsAppliedOnce) {
  GroupMemberSpec a = Pair("a", 3001);
  GroupMemberSpec b = Pair("b", 17);
  GroupInfo g = Create(Spec({a, b}));
  // Expected: the same kernel over copies of the member's arrays.
  optim::Executor exec(1);
  struct Copy {
    std::vector<uint8_t> param, grad, master, s0, s1;
  };
  std::vector<Copy> copies;
  for (const GroupMemberInfo& m : g.members) {
    copies.push_back({Bytes(m.param_object_id), Bytes(m.grad_object_id),
                      Bytes(m.master_object_id), Bytes(m.state_object_ids[0]),
                      Bytes(m.state_object_ids[1])});
  }
  for (const GroupMemberInfo& m : g.members) {
    auto sq = host_->GradReady(session_.session_id, g.group_id, m.grad_object_id, 1, 0);
    ASSERT_TRUE(sq.ok()) << sq.status();
    EXPECT_GT(*sq, 0);
  }
  auto outcome = host_->Step(session_.session_id, g.group_id, 1, 2e-3f, 0.5f, false);
  ASSERT_TRUE(outcome.ok()) << outcome.status();
  EXPECT_TRUE(outcome->applied);
  EXPECT_FALSE(outcome->repeated);
  EXPECT_EQ(outcome->applied_steps, 1u);
  // The passes ran one after another: busy time is their sum (measured
  // around the same calls, so within the clock reads between them).
  const OptimizerStats stats = host_->Stats();
  EXPECT_EQ(stats.grad_ready, 2u);
  EXPECT_GT(stats.grad_ready_seconds, 0);
  EXPECT_GT(stats.busy_seconds, 0);
  EXPECT_LE(stats.busy_seconds, stats.step_seconds + stats.grad_ready_seconds + 1e-3);
  optim::Hyper hyper = Spec({}).hyper;
  hyper.lr = 2e-3f;
  for (size_t i = 0; i < copies.size(); ++i) {
    Copy& c = copies[i];
    optim::ShardView view;
    view.grad_dtype = DType::kBFloat16;
    view.grad = c.grad.data();
    view.master = reinterpret_cast<float*>(c.master.data());
    view.state[0] = reinterpret_cast<float*>(c.s0.data());
    view.state[1] = reinterpret_cast<float*>(c.s1.data());
    view.param_dtype = DType::kBFloat16;
    view.param = c.param.data();
    view.n = g.members[i].num_elements;
    ASSERT_TRUE(optim::Step(hyper, {1, 0.5f}, view, exec).ok());
    EXPECT_EQ(Bytes(g.members[i].param_object_id), c.param) << "member " << i;
    EXPECT_EQ(Bytes(g.members[i].master_object_id), c.master);
    EXPECT_EQ(Bytes(g.members[i].state_object_ids[0]), c.s0);
    EXPECT_EQ(Bytes(g.members[i].state_object_ids[1]), c.s1);
    EXPECT_EQ(Record(g.members[i].param_object_id).version, 1u);
    EXPECT_EQ(Record(g.members[i].master_object_id).version, 1u);
    EXPECT_EQ(Record(g.members[i].grad_object_id).version, 0u);
  }
  // A resend of step 1 is answered with its outcome and changes nothing.
  auto before = Snapshot();
  auto again = host_->Step(session_.session_id, g.group_id, 1, 2e-3f, 0.5f, false);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(again->repeated);
  EXPECT_TRUE(again->applied);
  EXPECT_EQ(again->applied_steps, 1u);
  EXPECT_EQ(Snapshot(), before);
  EXPECT_EQ(host_->Stats().steps_applied, 1u);
  EXPECT_EQ(host_->Stats().steps_repeated, 1u);
}

// A worker resuming from a checkpoint: the group continues at its step and
// Adam's bias correction counts the steps applied before.
TEST_F(OptimizerHostTest, AResumedGroupContinuesItsStepCount) {
  GroupMemberSpec a = Pair("a", 777);
  GroupSpec bad = Spec({a});
  bad.resume_step = 7;
  bad.resume_applied_steps = 8;
  const size_t objects = ObjectCount();
  auto refused = host_->CreateGroup(session_.session_id, session_.token, bad);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(refused.status().message().find("resume_applied_steps (8) exceeds resume_step (7)"),
            absl::string_view::npos)
      << refused.status();
  EXPECT_EQ(ObjectCount(), objects);

  GroupSpec spec = Spec({a});
  spec.resume_step = 7;
  spec.resume_applied_steps = 5;  // two fp16 steps were skipped
  GroupInfo g = Create(spec);
  EXPECT_EQ(g.last_step, 7u);
  EXPECT_EQ(g.applied_steps, 5u);
  const GroupMemberInfo& m = g.members[0];
  std::vector<uint8_t> param = Bytes(m.param_object_id), grad = Bytes(m.grad_object_id),
                       master = Bytes(m.master_object_id), s0 = Bytes(m.state_object_ids[0]),
                       s1 = Bytes(m.state_object_ids[1]);
  auto old = host_->Step(session_.session_id, g.group_id, 3, 1e-3f, 1.0f, false);
  ASSERT_FALSE(old.ok());
  EXPECT_EQ(old.status().code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(host_->GradReady(session_.session_id, g.group_id, m.grad_object_id, 8, 0).ok());
  auto outcome = host_->Step(session_.session_id, g.group_id, 8, 1e-3f, 1.0f, false);
  ASSERT_TRUE(outcome.ok()) << outcome.status();
  EXPECT_TRUE(outcome->applied);
  EXPECT_EQ(outcome->applied_steps, 6u);
  optim::Executor exec(1);
  optim::ShardView view;
  view.grad_dtype = DType::kBFloat16;
  view.grad = grad.data();
  view.master = reinterpret_cast<float*>(master.data());
  view.state[0] = reinterpret_cast<float*>(s0.data());
  view.state[1] = reinterpret_cast<float*>(s1.data());
  view.param_dtype = DType::kBFloat16;
  view.param = param.data();
  view.n = m.num_elements;
  ASSERT_TRUE(optim::Step(Spec({}).hyper, {6, 1.0f}, view, exec).ok());
  EXPECT_EQ(Bytes(m.param_object_id), param);
  EXPECT_EQ(Bytes(m.master_object_id), master);
}

TEST_F(OptimizerHostTest, AccumulatesMicroStepsInFp32) {
  GroupMemberSpec m = Pair("a", 64, kBF16, kF32);
  GroupInfo g = Create(Spec({m}, /*gas=*/2));
  uint64_t accum = g.members[0].accumulator_object_id;
  ASSERT_NE(accum, 0u);
  std::vector<uint8_t> g0 = Bytes(m.grad_object_id);
  ASSERT_TRUE(host_->GradReady(session_.session_id, g.group_id, m.grad_object_id, 1, 0).ok());
  FillRandom(Record(m.grad_object_id), 0.01f);
  std::vector<uint8_t> g1 = Bytes(m.grad_object_id);
  // Stepping after one of two micro-steps is refused.
  auto early = host_->Step(session_.session_id, g.group_id, 1, 1e-3f, 1.0f, false);
  EXPECT_EQ(early.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(early.status().message().find("1 of 2 micro-steps"), std::string::npos)
      << early.status();
  auto sq = host_->GradReady(session_.session_id, g.group_id, m.grad_object_id, 1, 1);
  ASSERT_TRUE(sq.ok()) << sq.status();
  double expected = 0;
  std::vector<uint8_t> acc = Bytes(accum);
  for (int i = 0; i < 64; ++i) {
    float a, b, got;
    std::memcpy(&a, g0.data() + 4 * i, 4);
    std::memcpy(&b, g1.data() + 4 * i, 4);
    std::memcpy(&got, acc.data() + 4 * i, 4);
    ASSERT_EQ(got, a + b) << i;
    expected += static_cast<double>(a + b) * (a + b);
  }
  EXPECT_NEAR(*sq, expected, expected * 1e-12);
  // The resent last micro-step is answered again, not added twice.
  auto resent = host_->GradReady(session_.session_id, g.group_id, m.grad_object_id, 1, 1);
  ASSERT_TRUE(resent.ok());
  EXPECT_EQ(*resent, *sq);
  EXPECT_EQ(Bytes(accum), acc);
  ASSERT_TRUE(host_->Step(session_.session_id, g.group_id, 1, 1e-3f, 1.0f, false).ok());
  // Step 2 starts again at micro-step 0 (which assigns, not adds).
  auto out_of_order = host_->GradReady(session_.session_id, g.group_id, m.grad_object_id, 2, 1);
  EXPECT_EQ(out_of_order.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(host_->GradReady(session_.session_id, g.group_id, m.grad_object_id, 2, 0).ok());
  acc = Bytes(accum);
  for (int i = 0; i < 64; ++i) {
    float b, got;
    std::memcpy(&b, g1.data() + 4 * i, 4);
    std::memcpy(&got, acc.data() + 4 * i, 4);
    ASSERT_EQ(got, b) << i;
  }
}

TEST_F(OptimizerHostTest, NonFiniteGradientIsRefusedUnlessTheStepIsSkipped) {
  GroupMemberSpec m = Pair("a", 32, kBF16, kF32);
  GroupInfo g = Create(Spec({m}));
  ObjectRecord grad = Record(m.grad_object_id);
  float inf = std::numeric_limits<float>::infinity();
  std::memcpy(arena_->Data(grad.extent) + 4 * 5, &inf, 4);
  auto sq = host_->GradReady(session_.session_id, g.group_id, m.grad_object_id, 1, 0);
  ASSERT_TRUE(sq.ok());
  EXPECT_FALSE(std::isfinite(*sq));
  auto before = Snapshot();
  auto refused = host_->Step(session_.session_id, g.group_id, 1, 1e-3f, 1.0f, false);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(refused.status().message().find("non-finite"), std::string::npos);
  EXPECT_EQ(Snapshot(), before);
  auto skipped = host_->Step(session_.session_id, g.group_id, 1, 1e-3f, 1.0f, true);
  ASSERT_TRUE(skipped.ok()) << skipped.status();
  EXPECT_TRUE(skipped->skipped);
  EXPECT_FALSE(skipped->applied);
  EXPECT_EQ(skipped->applied_steps, 0u);
  EXPECT_EQ(Snapshot(), before);
  EXPECT_EQ(host_->Stats().steps_skipped, 1u);
  // The next step is 2, and bias correction still counts from 1.
  auto next = host_->Step(session_.session_id, g.group_id, 3, 1e-3f, 1.0f, true);
  EXPECT_EQ(next.status().code(), absl::StatusCode::kFailedPrecondition);
}

// A worker's own sum of squares (groups without accumulation) stands in for
// spilld's pass: the same step follows, nothing reads the shard, and a
// non-finite sum refuses the step like a non-finite gradient.
TEST_F(OptimizerHostTest, AWorkersSumOfSquaresReplacesThePass) {
  GroupMemberSpec a = Pair("a", 257), b = Pair("b", 257);
  for (auto [from, to] : {std::pair{a.param_object_id, b.param_object_id},
                          std::pair{a.grad_object_id, b.grad_object_id}}) {
    std::vector<uint8_t> bytes = Bytes(from);
    std::memcpy(arena_->Data(Record(to).extent), bytes.data(), bytes.size());
  }
  GroupSpec sa = Spec({a}), sb = Spec({b});
  sa.name = "twin-a";
  sb.name = "twin-b";
  GroupInfo ga = Create(sa), gb = Create(sb);
  auto own = host_->GradReady(session_.session_id, ga.group_id, a.grad_object_id, 1, 0);
  ASSERT_TRUE(own.ok()) << own.status();
  const double pass_seconds = host_->Stats().grad_ready_seconds;
  auto given = host_->GradReady(session_.session_id, gb.group_id, b.grad_object_id, 1, 0, *own);
  ASSERT_TRUE(given.ok()) << given.status();
  EXPECT_EQ(*given, *own);
  EXPECT_EQ(host_->Stats().grad_ready_seconds, pass_seconds);  // No pass ran.
  EXPECT_EQ(host_->Stats().grad_ready, 2u);
  ASSERT_TRUE(host_->Step(session_.session_id, ga.group_id, 1, 1e-3f, 0.5f, false).ok());
  ASSERT_TRUE(host_->Step(session_.session_id, gb.group_id, 1, 1e-3f, 0.5f, false).ok());
  EXPECT_EQ(Bytes(a.param_object_id), Bytes(b.param_object_id));
  EXPECT_EQ(Bytes(ga.members[0].master_object_id), Bytes(gb.members[0].master_object_id));

  // A non-finite sum: the step is refused and changes nothing.
  ASSERT_TRUE(host_->GradReady(session_.session_id, gb.group_id, b.grad_object_id, 2, 0,
                               std::numeric_limits<double>::quiet_NaN())
                  .ok());
  auto before = Snapshot();
  auto refused = host_->Step(session_.session_id, gb.group_id, 2, 1e-3f, 1.0f, false);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(refused.status().message().find("non-finite"), std::string::npos);
  EXPECT_EQ(Snapshot(), before);

  // A group that accumulates must read its shards itself: refused, and the
  // micro-step is still expected.
  GroupMemberSpec c = Pair("c", 64, kBF16, kF32);
  GroupSpec sc = Spec({c}, /*gas=*/2);
  sc.name = "accumulating";
  GroupInfo gc = Create(sc);
  before = Snapshot();
  auto accumulating =
      host_->GradReady(session_.session_id, gc.group_id, c.grad_object_id, 1, 0, 1.0);
  EXPECT_EQ(accumulating.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(accumulating.status().message().find("accumulates 2 micro-steps"), std::string::npos)
      << accumulating.status();
  EXPECT_EQ(Snapshot(), before);
  EXPECT_TRUE(host_->GradReady(session_.session_id, gc.group_id, c.grad_object_id, 1, 0).ok());
}

TEST_F(OptimizerHostTest, BadGroupsAreRefusedAndLeaveNothingBehind) {
  GroupMemberSpec a = Pair("a", 100);
  GroupMemberSpec short_grad{a.param_object_id, Pair("b", 99).grad_object_id};
  const size_t objects = ObjectCount();
  auto expect = [&](GroupSpec spec, absl::StatusCode code, const std::string& text) {
    auto r = host_->CreateGroup(session_.session_id, session_.token, spec);
    EXPECT_EQ(r.status().code(), code) << r.status();
    EXPECT_NE(r.status().message().find(text), std::string::npos) << r.status();
    EXPECT_EQ(ObjectCount(), objects);
  };
  expect(Spec({short_grad}), absl::StatusCode::kInvalidArgument, "99");
  GroupSpec bad_lr = Spec({a});
  bad_lr.hyper.lr = -1;
  expect(bad_lr, absl::StatusCode::kInvalidArgument, "lr");
  expect(Spec({}), absl::StatusCode::kInvalidArgument, "members");
  expect(Spec({a}, 0), absl::StatusCode::kInvalidArgument, "gradient_accumulation_steps");
  expect(Spec({{a.param_object_id, a.param_object_id}}), absl::StatusCode::kInvalidArgument,
         "more than once");
  expect(Spec({{a.param_object_id, 9999}}), absl::StatusCode::kNotFound, "9999");
  auto ints = registry_->RegisterObject(session_.session_id, session_.token, "i", kParam, kI32, 100);
  const size_t with_ints = objects + 1;
  auto r = host_->CreateGroup(session_.session_id, session_.token,
                              Spec({{ints->id, a.grad_object_id}}));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("int32"), std::string::npos) << r.status();
  EXPECT_EQ(ObjectCount(), with_ints);
  GroupSpec on_nvme = Spec({a});
  on_nvme.states_on_nvme = true;
  r = host_->CreateGroup(session_.session_id, session_.token, on_nvme);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(r.status().message().find("--nvme-dirs"), std::string::npos) << r.status();
  GroupSpec unnamed = Spec({a});
  unnamed.name = "";
  r = host_->CreateGroup(session_.session_id, session_.token, unnamed);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  Token wrong = session_.token;
  wrong[0] ^= 1;
  r = host_->CreateGroup(session_.session_id, wrong, Spec({a}));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnauthenticated);
}

TEST_F(OptimizerHostTest, QuotaExhaustedMidwayLeavesNothingBehind) {
  Make(/*quota=*/64 << 10);
  // 5000 bf16 elements: param + grad = 20 KB; master + 2 states = 60 KB.
  GroupMemberSpec a = Pair("a", 5000);
  const size_t objects = ObjectCount();
  auto r = host_->CreateGroup(session_.session_id, session_.token, Spec({a}));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted) << r.status();
  EXPECT_EQ(ObjectCount(), objects);
  EXPECT_EQ(host_->Stats().groups, 0u);
  // The name is free again: a smaller optimizer (SGD, no state) fits.
  GroupSpec sgd = Spec({a});
  sgd.hyper.algo = optim::Algo::kSgd;
  sgd.hyper.weight_decay = 0;
  EXPECT_TRUE(host_->CreateGroup(session_.session_id, session_.token, sgd).ok());
}

TEST_F(OptimizerHostTest, SameNameReturnsTheGroupOrNamesTheDifference) {
  GroupMemberSpec a = Pair("a", 10);
  GroupInfo g = Create(Spec({a}));
  auto again = host_->CreateGroup(session_.session_id, session_.token, Spec({a}));
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(again->second);
  EXPECT_EQ(again->first.group_id, g.group_id);
  GroupSpec other = Spec({a});
  other.hyper.lr = 5e-4f;
  auto differs = host_->CreateGroup(session_.session_id, session_.token, other);
  EXPECT_EQ(differs.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_NE(differs.status().message().find("optimizer parameters"), std::string::npos);
  GroupSpec reuse = Spec({a});
  reuse.name = "h";
  auto taken = host_->CreateGroup(session_.session_id, session_.token, reuse);
  EXPECT_EQ(taken.status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(OptimizerHostTest, StreamRequestsCheckTheirArguments) {
  GroupMemberSpec a = Pair("a", 10);
  GroupInfo g = Create(Spec({a}, 2));
  const uint64_t s = session_.session_id;
  EXPECT_EQ(host_->GradReady(s, 999, a.grad_object_id, 1, 0).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(host_->GradReady(s, g.group_id, a.param_object_id, 1, 0).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(host_->GradReady(s, g.group_id, a.grad_object_id, 1, 2).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(host_->GradReady(s, g.group_id, a.grad_object_id, 2, 0).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(host_->GradReady(s, g.group_id, a.grad_object_id, 1, 1).status().code(),
            absl::StatusCode::kFailedPrecondition);
  float nan = std::nanf("");
  EXPECT_EQ(host_->Step(s, g.group_id, 1, nan, 1.0f, false).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(host_->Step(s, g.group_id, 1, 1e-3f, 0.0f, false).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(host_->Step(s, g.group_id, 2, 1e-3f, 1.0f, false).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(host_->Step(s + 100, g.group_id, 1, 1e-3f, 1.0f, false).status().code(),
            absl::StatusCode::kFailedPrecondition);  // Not an attached session.
}

// Speculative steps: two groups over identical copies; one steps as final
// with grad_scale s, the other speculatively with 1 and is committed with s.
TEST_F(OptimizerHostTest, ACommittedSpeculativeStepIsTheFinalStep) {
  const uint64_t sid = session_.session_id;
  for (float scale : {1.0f, 0.5f, 0.05f}) {
    const std::string tag = std::to_string(scale);
    GroupMemberSpec a = Pair("final" + tag, 3001);
    GroupMemberSpec b = Pair("spec" + tag, 3001);
    for (auto [from, to] : {std::pair{a.param_object_id, b.param_object_id},
                            std::pair{a.grad_object_id, b.grad_object_id}}) {
      std::memcpy(arena_->Data(Record(to).extent), arena_->Data(Record(from).extent),
                  Record(from).extent.size);
    }
    GroupSpec spec_a = Spec({a}), spec_b = Spec({b});
    spec_a.name = "final" + tag;
    spec_b.name = "spec" + tag;
    GroupInfo ga = Create(spec_a), gb = Create(spec_b);
    for (uint64_t step = 1; step <= 2; ++step) {
      ASSERT_TRUE(host_->GradReady(sid, ga.group_id, a.grad_object_id, step, 0).ok());
      ASSERT_TRUE(host_->GradReady(sid, gb.group_id, b.grad_object_id, step, 0).ok());
      ASSERT_TRUE(host_->Step(sid, ga.group_id, step, 2e-3f, scale, false).ok());
      auto ran = host_->Step(sid, gb.group_id, step, 2e-3f, 1.0f, false, StepMode::kSpeculative);
      ASSERT_TRUE(ran.ok()) << ran.status();
      EXPECT_TRUE(ran->applied && ran->speculative && !ran->rescaled);
      // The commit's lr is the speculative step's; the one sent is ignored.
      auto done = host_->Step(sid, gb.group_id, step, 0.f, scale, false, StepMode::kCommit);
      ASSERT_TRUE(done.ok()) << done.status();
      EXPECT_TRUE(done->applied && !done->speculative && !done->repeated);
      EXPECT_EQ(done->rescaled, scale != 1.0f);
      EXPECT_EQ(done->applied_steps, step);
    }
    const GroupMemberInfo& ma = ga.members[0];
    const GroupMemberInfo& mb = gb.members[0];
    const std::pair<uint64_t, uint64_t> fp32[] = {
        {ma.master_object_id, mb.master_object_id},
        {ma.state_object_ids[0], mb.state_object_ids[0]},
        {ma.state_object_ids[1], mb.state_object_ids[1]}};
    if (scale == 1.0f) {
      EXPECT_EQ(Bytes(mb.param_object_id), Bytes(ma.param_object_id));
      for (auto [x, y] : fp32) EXPECT_EQ(Bytes(y), Bytes(x)) << "object " << y;
      continue;
    }
    // Rescaled: the same to the rounding optim::Rescale documents: about
    // 2^-24 * (1 / scale)^2 relative in the second moment, so the update
    // lr * m / sqrt(v) to half that; the master to that part of lr.
    const double update_tol = 2e-3 * 1e-4;  // lr * 1e-4
    for (auto [x, y] : fp32) {
      const double abs_tol = x == ma.master_object_id ? update_tol : 1e-12;
      std::vector<uint8_t> bx = Bytes(x), by = Bytes(y);
      const float* fx = reinterpret_cast<const float*>(bx.data());
      const float* fy = reinterpret_cast<const float*>(by.data());
      for (uint64_t i = 0; i < ma.num_elements; ++i) {
        ASSERT_NEAR(fy[i], fx[i], 2e-4 * std::fabs(fx[i]) + abs_tol)
            << "scale " << scale << " object " << y << " element " << i;
      }
    }
  }
  const OptimizerStats stats = host_->Stats();
  EXPECT_EQ(stats.steps_speculative, 6u);
  EXPECT_EQ(stats.steps_committed, 6u);
  EXPECT_EQ(stats.steps_rescaled, 4u);
  EXPECT_EQ(stats.steps_applied, 12u);
}

TEST_F(OptimizerHostTest, ASpeculativeStepHoldsTheGroupUntilItsCommit) {
  const uint64_t sid = session_.session_id;
  GroupMemberSpec a = Pair("a", 100);
  GroupInfo g = Create(Spec({a}));
  ASSERT_TRUE(host_->GradReady(sid, g.group_id, a.grad_object_id, 1, 0).ok());
  // Nothing to commit yet.
  absl::Status early = host_->Step(sid, g.group_id, 1, 1e-3f, 1.0f, false,
                                   StepMode::kCommit).status();
  EXPECT_EQ(early.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(early.message().find("has no speculative step 1 to commit"), std::string::npos)
      << early;
  ASSERT_TRUE(host_->Step(sid, g.group_id, 1, 1e-3f, 1.0f, false, StepMode::kSpeculative).ok());
  const auto pending = Snapshot();
  auto expect_held = [&](absl::Status st, const char* what) {
    EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition) << what << ": " << st;
    EXPECT_NE(st.message().find("step 1 is speculative: commit it before"), std::string::npos)
        << what << ": " << st;
  };
  expect_held(host_->GradReady(sid, g.group_id, a.grad_object_id, 2, 0).status(), "gradient");
  expect_held(host_->Step(sid, g.group_id, 2, 1e-3f, 1.0f, false).status(), "final step");
  expect_held(host_->Step(sid, g.group_id, 2, 1e-3f, 1.0f, false, StepMode::kSpeculative).status(),
              "speculative step");
  auto m = registry_->RegisterObject(sid, session_.token, "copy.m", kParam, kF32, 100);
  auto s0 = registry_->RegisterObject(sid, session_.token, "copy.s0", kParam, kF32, 100);
  auto s1 = registry_->RegisterObject(sid, session_.token, "copy.s1", kParam, kF32, 100);
  ASSERT_TRUE(m.ok() && s0.ok() && s1.ok());
  expect_held(host_->CopyState(sid, session_.token, g.group_id, 0, StateCopy::kExport,
                               {m->id, s0->id, s1->id}),
              "state copy");
  // A commit of another step, or one that asks to skip, changes nothing.
  EXPECT_EQ(host_->Step(sid, g.group_id, 2, 1e-3f, 0.5f, false, StepMode::kCommit).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(host_->Step(sid, g.group_id, 1, 1e-3f, 0.5f, true, StepMode::kCommit).status().code(),
            absl::StatusCode::kInvalidArgument);
  // A resent speculative step is answered with its outcome, still pending.
  auto resent = host_->Step(sid, g.group_id, 1, 1e-3f, 1.0f, false, StepMode::kSpeculative);
  ASSERT_TRUE(resent.ok()) << resent.status();
  EXPECT_TRUE(resent->repeated && resent->speculative);
  const std::vector<std::vector<uint8_t>> after_refusals = Snapshot();
  EXPECT_EQ(after_refusals.size(), pending.size() + 3);  // the three copy targets
  for (size_t i = 0; i < pending.size(); ++i) EXPECT_EQ(after_refusals[i], pending[i]) << i;
  ASSERT_TRUE(host_->Step(sid, g.group_id, 1, 1e-3f, 0.5f, false, StepMode::kCommit).ok());
  // A resent commit is answered again, not rescaled twice.
  const auto committed = Snapshot();
  auto again = host_->Step(sid, g.group_id, 1, 1e-3f, 0.25f, false, StepMode::kCommit);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(again->repeated && again->rescaled && !again->speculative);
  EXPECT_EQ(Snapshot(), committed);
  // The group goes on.
  EXPECT_TRUE(host_->GradReady(sid, g.group_id, a.grad_object_id, 2, 0).ok());
  EXPECT_TRUE(host_->CopyState(sid, session_.token, g.group_id, 0, StateCopy::kExport,
                               {m->id, s0->id, s1->id})
                  .ok());
}

// The reactor's fast path: only a commit that keeps the step as it ran.
TEST_F(OptimizerHostTest, ACommitAsRunNeedsNoPassAndAnyOtherGoesThroughStep) {
  const uint64_t sid = session_.session_id;
  GroupMemberSpec a = Pair("quick", 100);
  GroupInfo g = Create(Spec({a}));
  EXPECT_FALSE(host_->TryCommitAsRun(sid, g.group_id, 1, 1.0f).has_value());  // nothing pending
  ASSERT_TRUE(host_->GradReady(sid, g.group_id, a.grad_object_id, 1, 0).ok());
  ASSERT_TRUE(host_->Step(sid, g.group_id, 1, 1e-3f, 1.0f, false, StepMode::kSpeculative).ok());
  const auto pending = Snapshot();
  EXPECT_FALSE(host_->TryCommitAsRun(sid, g.group_id, 1, 0.5f).has_value());  // a rescale
  EXPECT_FALSE(host_->TryCommitAsRun(sid, g.group_id, 2, 1.0f).has_value());  // another step
  EXPECT_FALSE(host_->TryCommitAsRun(sid, 999, 1, 1.0f).has_value());         // no such group
  EXPECT_FALSE(host_->TryCommitAsRun(sid + 100, g.group_id, 1, 1.0f).has_value());
  EXPECT_EQ(Snapshot(), pending);
  std::optional<StepOutcome> done = host_->TryCommitAsRun(sid, g.group_id, 1, 1.0f);
  ASSERT_TRUE(done.has_value());
  EXPECT_TRUE(done->applied && !done->speculative && !done->rescaled);
  EXPECT_EQ(Snapshot(), pending);  // Nothing to change.
  EXPECT_EQ(host_->Stats().steps_committed, 1u);
  EXPECT_TRUE(host_->GradReady(sid, g.group_id, a.grad_object_id, 2, 0).ok());
}

TEST_F(OptimizerHostTest, SpeculationIsRefusedWhereAStepCannotBeRescaled) {
  const uint64_t sid = session_.session_id;
  struct Case {
    optim::Algo algo;
    float weight_decay;
    const char* message;
  };
  const Case cases[] = {
      {optim::Algo::kLion, 0.f, "its optimizer (lion) cannot be rescaled"},
      {optim::Algo::kAdam, 0.01f, "its optimizer (adam with weight decay) cannot be rescaled"},
  };
  int k = 0;
  for (const Case& c : cases) {
    GroupMemberSpec a = Pair("r" + std::to_string(k), 64);
    GroupSpec spec = Spec({a});
    spec.name = "r" + std::to_string(k++);
    spec.hyper.algo = c.algo;
    spec.hyper.weight_decay = c.weight_decay;
    GroupInfo g = Create(spec);
    ASSERT_TRUE(host_->GradReady(sid, g.group_id, a.grad_object_id, 1, 0).ok());
    const auto before = Snapshot();
    absl::Status st =
        host_->Step(sid, g.group_id, 1, 1e-3f, 1.0f, false, StepMode::kSpeculative).status();
    EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition) << st;
    EXPECT_NE(st.message().find(c.message), std::string::npos) << st;
    EXPECT_EQ(Snapshot(), before);
    // The step itself is still to be taken.
    EXPECT_TRUE(host_->Step(sid, g.group_id, 1, 1e-3f, 1.0f, false).ok());
  }
  GroupMemberSpec a = Pair("skip", 64);
  GroupSpec spec = Spec({a});
  spec.name = "skip";
  GroupInfo g = Create(spec);
  ASSERT_TRUE(host_->GradReady(sid, g.group_id, a.grad_object_id, 1, 0).ok());
  absl::Status st =
      host_->Step(sid, g.group_id, 1, 1e-3f, 1.0f, true, StepMode::kSpeculative).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
  EXPECT_NE(st.message().find("cannot be skipped"), std::string::npos) << st;
}

TEST_F(OptimizerHostTest, StepOnAFreedMemberChangesNoMember) {
  GroupMemberSpec a = Pair("a", 10);
  GroupMemberSpec b = Pair("b", 10);
  GroupInfo g = Create(Spec({a, b}));
  for (const auto& m : {a, b}) {
    ASSERT_TRUE(host_->GradReady(session_.session_id, g.group_id, m.grad_object_id, 1, 0).ok());
  }
  ASSERT_TRUE(registry_->FreeObject(session_.session_id, session_.token, b.param_object_id).ok());
  auto before = Snapshot();
  auto r = host_->Step(session_.session_id, g.group_id, 1, 1e-3f, 1.0f, false);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kNotFound) << r.status();
  EXPECT_EQ(Snapshot(), before);
}

TEST_F(OptimizerHostTest, DropFreesStatesAndJobExpiryDropsGroups) {
  GroupMemberSpec a = Pair("a", 10);
  const size_t objects = ObjectCount();
  GroupInfo g = Create(Spec({a}));
  EXPECT_EQ(ObjectCount(), objects + 3);
  ASSERT_TRUE(host_->DropGroup(session_.session_id, session_.token, g.group_id).ok());
  EXPECT_EQ(ObjectCount(), objects);
  EXPECT_EQ(host_->DropGroup(session_.session_id, session_.token, g.group_id).code(),
            absl::StatusCode::kNotFound);
  Create(Spec({a}));
  EXPECT_EQ(host_->Stats().groups, 1u);
  registry_->DetachStream(session_.session_id);
  now_ += milliseconds(2000);
  registry_->Tick();
  EXPECT_EQ(host_->Stats().groups, 0u);
  session_ = Open("job");
  EXPECT_TRUE(host_->ListGroups(session_.session_id, session_.token)->empty());
}

}  // namespace
}  // namespace spill::server
