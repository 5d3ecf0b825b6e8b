// The NVMe-streamed step against an in-memory store that completes requests
// on its own thread, can hold completions back until the pipeline has
// reached a given point (proving overlap by event order, not timing), and
// can fail a chosen request.
#include "server/optim/streamed_step.h"

#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "server/optim/test_util.h"

namespace spill::optim {
namespace {

using Clock = std::chrono::steady_clock;

class FakeStore final : public StateStore {
 public:
  FakeStore(uint64_t n, uint64_t sg, int states) : sg_(n ? sg : 1), master(n) {
    for (int s = 0; s < states; ++s) state[s].resize(n);
    worker_ = std::thread([this] { Run(); });
  }
  ~FakeStore() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    worker_.join();
  }

  void ReadAsync(uint64_t begin, uint64_t count, float* m, float* st[2],
                 std::function<void(absl::Status)> done) override {
    const uint64_t piece = begin / sg_;
    float* dst[2] = {st[0], st[1]};  // the array itself lives only during the call
    Enqueue(true, piece, [=, this] {
      if (fail_read_piece == static_cast<int64_t>(piece)) return absl::DataLossError("read failed");
      std::memcpy(m, master.data() + begin, count * 4);
      for (int s = 0; s < 2; ++s) {
        if (dst[s] != nullptr) std::memcpy(dst[s], state[s].data() + begin, count * 4);
      }
      return absl::OkStatus();
    }, std::move(done));
  }
  void WriteAsync(uint64_t begin, uint64_t count, const float* m, float* const st[2],
                  std::function<void(absl::Status)> done) override {
    const uint64_t piece = begin / sg_;
    float* s0 = st[0];
    float* s1 = st[1];
    Enqueue(false, piece, [=, this] {
      if (fail_write_piece == static_cast<int64_t>(piece)) {
        return absl::InternalError("write failed");
      }
      std::memcpy(master.data() + begin, m, count * 4);
      if (s0 != nullptr) std::memcpy(state[0].data() + begin, s0, count * 4);
      if (s1 != nullptr) std::memcpy(state[1].data() + begin, s1, count * 4);
      return absl::OkStatus();
    }, std::move(done));
  }

  // Pipeline observer: records events and releases held completions.
  void Observe(StreamEvent e, uint64_t piece) {
    std::lock_guard<std::mutex> lock(mu_);
    events.emplace_back(e, piece);
    if (e == StreamEvent::kUpdateEnd) updated_ = piece + 1;
    cv_.notify_all();
  }
  size_t IndexOf(StreamEvent e, uint64_t piece) {
    std::lock_guard<std::mutex> lock(mu_);
    for (size_t i = 0; i < events.size(); ++i) {
      if (events[i] == std::make_pair(e, piece)) return i;
    }
    return SIZE_MAX;
  }

  const uint64_t sg_;
  std::vector<float> master, state[2];
  int64_t fail_read_piece = -1, fail_write_piece = -1;
  // When set, the read of piece k+1 and the write of piece k-1 complete only
  // after the update of piece k has ended (else after a 10 s timeout, which
  // counts as a violation): a pipeline that waited for either before
  // updating piece k would hit the timeout.
  bool hold_until_update = false;
  int violations = 0;
  std::vector<std::pair<StreamEvent, uint64_t>> events;

 private:
  struct Op {
    bool read;
    uint64_t piece;
    std::function<absl::Status()> io;
    std::function<void(absl::Status)> done;
    Clock::time_point deadline;
  };
  void Enqueue(bool read, uint64_t piece, std::function<absl::Status()> io,
               std::function<void(absl::Status)> done) {
    std::lock_guard<std::mutex> lock(mu_);
    ops_.push_back({read, piece, std::move(io), std::move(done),
                    Clock::now() + std::chrono::seconds(10)});
    cv_.notify_all();
  }
  // Under mu_: whether op may complete now.
  bool Ready(const Op& op) const {
    if (!hold_until_update) return true;
    // read k+1 waits for update k to end; write k-1 waits for update k to end.
    const uint64_t need = op.read ? op.piece : op.piece + 2;  // pieces updated
    if (op.read && op.piece == 0) return true;
    return updated_ >= need || (!op.read && last_piece_written(op.piece));
  }
  bool last_piece_written(uint64_t piece) const { return (piece + 1) * sg_ >= master.size(); }
  void Run() {
    std::unique_lock<std::mutex> lock(mu_);
    while (true) {
      auto it = ops_.begin();
      for (; it != ops_.end(); ++it) {
        if (Ready(*it) || Clock::now() >= it->deadline) break;
      }
      if (it == ops_.end()) {
        if (stop_ && ops_.empty()) return;
        cv_.wait_for(lock, std::chrono::milliseconds(5));
        continue;
      }
      Op op = std::move(*it);
      ops_.erase(it);
      if (!Ready(op)) ++violations;
      lock.unlock();
      std::this_thread::sleep_for(std::chrono::microseconds(200));  // device latency
      const absl::Status s = op.io();
      op.done(s);
      lock.lock();
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Op> ops_;
  uint64_t updated_ = 0;
  bool stop_ = false;
  std::thread worker_;
};

struct Fixture {
  Hyper h;
  uint64_t n, sg;
  testing::Buffer grad, param;
  std::vector<float> master, s0, s1;
  Fixture(Algo algo, uint64_t n_, uint64_t sg_, std::mt19937& rng)
      : n(n_), sg(sg_), grad(DType::kBFloat16, n_), param(DType::kBFloat16, n_),
        master(n_), s0(n_), s1(n_) {
    h.algo = algo;
    h.weight_decay = 0.01f;
    h.momentum = 0.9f;
    testing::FillRandom(rng, grad, n, -3, 0);
    std::normal_distribution<float> nd;
    for (uint64_t i = 0; i < n; ++i) {
      master[i] = nd(rng);
      s0[i] = nd(rng) * 0.01f;
      s1[i] = std::fabs(nd(rng)) * 1e-4f;
    }
  }
  void Load(FakeStore& store) {
    store.master = master;
    if (StateCount(h) > 0) store.state[0] = s0;
    if (StateCount(h) > 1) store.state[1] = s1;
  }
};

TEST(StreamedStepTest, EqualsInMemoryStepBitForBitAndOverlaps) {
  std::mt19937 rng(5);
  Executor exec(2);
  struct Shape { Algo algo; uint64_t n, sg; };
  for (const Shape& sh : {Shape{Algo::kAdamW, 1000, 64}, Shape{Algo::kAdamW, 1003, 100},
                          Shape{Algo::kLion, 4099, 512}, Shape{Algo::kSgd, 777, 50},
                          Shape{Algo::kAdagrad, 5, 1000}}) {
    Fixture s(sh.algo, sh.n, sh.sg, rng);
    const int states = StateCount(s.h);
    FakeStore store(sh.n, sh.sg, states);
    s.Load(store);
    store.hold_until_update = true;
    std::vector<float> buffer(3 * (1 + states) * sh.sg);
    testing::Buffer param(DType::kBFloat16, sh.n);
    StreamedStepReport report;
    report.observer = [&](StreamEvent e, uint64_t p) { store.Observe(e, p); };
    const StepArgs args{3, 0.5f};
    ASSERT_TRUE(StreamedStep(s.h, args, DType::kBFloat16, s.grad.data(), DType::kBFloat16,
                             param.data(), sh.n, store, sh.sg, buffer, exec, 0, &report).ok());
    // The in-memory step on the same inputs.
    ASSERT_TRUE(Step(s.h, args, {DType::kBFloat16, s.grad.data(), s.master.data(),
                                 {s.s0.data(), s.s1.data()}, DType::kBFloat16, s.param.data(), sh.n},
                     exec).ok());
    EXPECT_EQ(std::memcmp(store.master.data(), s.master.data(), sh.n * 4), 0);
    if (states > 0) {
      EXPECT_EQ(std::memcmp(store.state[0].data(), s.s0.data(), sh.n * 4), 0);
    }
    if (states > 1) {
      EXPECT_EQ(std::memcmp(store.state[1].data(), s.s1.data(), sh.n * 4), 0);
    }
    EXPECT_EQ(param.bytes, s.param.bytes);
    const uint64_t pieces = (sh.n + sh.sg - 1) / sh.sg;
    EXPECT_EQ(report.pieces, pieces);
    EXPECT_EQ(report.pieces_updated, pieces);
    EXPECT_EQ(report.elements_written, sh.n);
    EXPECT_EQ(store.violations, 0) << "a held completion had to time out: no overlap";
    for (uint64_t i = 0; i + 1 < pieces; ++i) {
      // read i+1 issued before update i began, and still in flight when it ended
      EXPECT_LT(store.IndexOf(StreamEvent::kReadIssued, i + 1),
                store.IndexOf(StreamEvent::kUpdateBegin, i));
      EXPECT_GT(store.IndexOf(StreamEvent::kReadDone, i + 1),
                store.IndexOf(StreamEvent::kUpdateEnd, i));
      if (i >= 1) {  // write i-1 in flight while piece i was updated
        EXPECT_LT(store.IndexOf(StreamEvent::kWriteIssued, i - 1),
                  store.IndexOf(StreamEvent::kUpdateBegin, i));
        EXPECT_GT(store.IndexOf(StreamEvent::kWriteDone, i - 1),
                  store.IndexOf(StreamEvent::kUpdateEnd, i));
      }
    }
  }
}

TEST(StreamedStepTest, ReadFailureStopsIssuingAndReportsWhatWasWritten) {
  std::mt19937 rng(6);
  Executor exec(1);
  Fixture s(Algo::kAdamW, 1000, 100, rng);
  FakeStore store(1000, 100, 2);
  s.Load(store);
  store.fail_read_piece = 5;
  std::vector<float> buffer(3 * 3 * 100);
  testing::Buffer param(DType::kBFloat16, 1000);
  StreamedStepReport report;
  report.observer = [&](StreamEvent e, uint64_t p) { store.Observe(e, p); };
  const absl::Status st = StreamedStep(s.h, {}, DType::kBFloat16, s.grad.data(),
                                       DType::kBFloat16, param.data(), 1000, store, 100, buffer,
                                       exec, 0, &report);
  EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss) << st;
  EXPECT_EQ(report.pieces_updated, 5u);
  EXPECT_EQ(store.IndexOf(StreamEvent::kReadIssued, 6), SIZE_MAX) << "issued after the failure";
  EXPECT_EQ(store.IndexOf(StreamEvent::kUpdateBegin, 5), SIZE_MAX);
  for (int i = 0; i < 4; ++i) EXPECT_TRUE(report.written[i]) << i;
  for (int i = 5; i < 10; ++i) EXPECT_FALSE(report.written[i]) << i;
  // The store holds new values exactly for the written pieces.
  std::vector<float> m = s.master, a = s.s0, b = s.s1;
  ASSERT_TRUE(Step(s.h, {}, {DType::kBFloat16, s.grad.data(), m.data(), {a.data(), b.data()},
                             DType::kFloat32, nullptr, 1000}, exec).ok());
  uint64_t written = 0;
  for (int p = 0; p < 10; ++p) {
    const std::vector<float>& want = report.written[p] ? m : s.master;
    EXPECT_EQ(std::memcmp(store.master.data() + p * 100, want.data() + p * 100, 400), 0) << p;
    written += report.written[p] ? 100 : 0;
  }
  EXPECT_EQ(report.elements_written, written);
}

TEST(StreamedStepTest, WriteFailureReturnsTheFirstErrorAfterDraining) {
  std::mt19937 rng(8);
  Executor exec(1);
  Fixture s(Algo::kLion, 2000, 128, rng);
  FakeStore store(2000, 128, 1);
  s.Load(store);
  store.fail_write_piece = 3;
  std::vector<float> buffer(3 * 2 * 128);
  StreamedStepReport report;
  const absl::Status st = StreamedStep(s.h, {}, DType::kBFloat16, s.grad.data(),
                                       DType::kBFloat16, nullptr, 2000, store, 128, buffer, exec,
                                       0, &report);
  EXPECT_EQ(st.code(), absl::StatusCode::kInternal) << st;
  EXPECT_FALSE(report.written[3]);
  EXPECT_LT(report.pieces_updated, report.pieces);
  for (uint64_t p = 0; p < 3; ++p) EXPECT_TRUE(report.written[p]);
  for (uint64_t p = report.pieces_updated; p < report.pieces; ++p) EXPECT_FALSE(report.written[p]);
}

TEST(StreamedStepTest, RejectsBadArgumentsBeforeAnyIo) {
  std::mt19937 rng(9);
  Executor exec(1);
  Fixture s(Algo::kAdamW, 100, 10, rng);
  FakeStore store(100, 10, 2);
  s.Load(store);
  std::vector<float> small(3 * 3 * 10 - 1), ok(3 * 3 * 10);
  StreamedStepReport report;
  report.observer = [&](StreamEvent e, uint64_t p) { store.Observe(e, p); };
  auto run = [&](uint64_t n, uint64_t sg, std::span<float> buf, const void* grad) {
    return StreamedStep(s.h, {}, DType::kBFloat16, grad, DType::kBFloat16, nullptr, n, store, sg,
                        buf, exec, 0, &report);
  };
  EXPECT_EQ(run(100, 10, small, s.grad.data()).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(run(100, 0, ok, s.grad.data()).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(run(0, 10, ok, s.grad.data()).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(run(100, 10, ok, nullptr).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(store.events.empty());
  EXPECT_EQ(store.master, s.master);
}

}  // namespace
}  // namespace spill::optim
