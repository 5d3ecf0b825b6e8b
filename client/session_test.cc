// The real client against an in-process fake spilld speaking the real wire
// protocol (gRPC and the fd channel on a temporary Unix socket).
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "client/testing/fake_spilld.h"
#include "spill/client.h"

namespace spill::client {
namespace {

using std::chrono::milliseconds;
using testing::FakeSpilld;

constexpr milliseconds kWait(10'000);

class SessionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<FakeSpilld>> fake = FakeSpilld::Start();
    ASSERT_TRUE(fake.ok()) << fake.status();
    fake_ = std::move(*fake);
  }

  std::unique_ptr<Session> Open(const std::string& job = "job-a") {
    SessionOptions options;
    options.socket_path = fake_->socket_path();
    options.job_id = job;
    options.timeout = milliseconds(5000);
    absl::StatusOr<std::unique_ptr<Session>> session = Session::Open(options);
    EXPECT_TRUE(session.ok()) << session.status();
    return session.ok() ? std::move(*session) : nullptr;
  }

  ObjectInfo Register(Session& session, const std::string& name, DType dtype, int64_t n) {
    absl::StatusOr<ObjectInfo> info = session.Register(name, ObjectKind::kParamShard, dtype, n);
    EXPECT_TRUE(info.ok()) << info.status();
    return info.value_or(ObjectInfo{});
  }

  std::unique_ptr<FakeSpilld> fake_;
};

TEST_F(SessionTest, RegisterAcquireFillWriteBackRelease) {
  std::unique_ptr<Session> session = Open();
  ASSERT_NE(session, nullptr);
  EXPECT_FALSE(session->job_existed());
  EXPECT_EQ(session->alignment_bytes(), 256u);
  EXPECT_EQ(fake_->attached_sessions(), 1);

  ObjectInfo info = Register(*session, "layer0.param", DType::kBFloat16, 1000);
  EXPECT_EQ(info.name, "layer0.param");
  EXPECT_EQ(info.byte_size(), 2000u);

  absl::StatusOr<ObjectInfo> pinned = session->Acquire(info.object_id)->Get(kWait);
  ASSERT_TRUE(pinned.ok()) << pinned.status();
  EXPECT_EQ(pinned->pin_count, 1u);
  absl::StatusOr<absl::Span<uint16_t>> bits = session->Data<uint16_t>(*pinned);
  ASSERT_TRUE(bits.ok()) << bits.status();
  ASSERT_EQ(bits->size(), 1000u);
  for (size_t i = 0; i < bits->size(); ++i) (*bits)[i] = static_cast<uint16_t>(0x3F80 + i);
  // Zero-copy: spilld's own mapping sees the bytes.
  uint16_t seen;
  std::memcpy(&seen, fake_->segment_data() + pinned->location.offset + 2 * 999, 2);
  EXPECT_EQ(seen, 0x3F80 + 999);

  absl::StatusOr<ObjectInfo> written = session->WriteBack(info.object_id, 1)->Get(kWait);
  ASSERT_TRUE(written.ok()) << written.status();
  EXPECT_EQ(written->version, 1u);
  ASSERT_TRUE(session->Release(info.object_id)->Wait(kWait).ok());

  absl::StatusOr<std::vector<ObjectInfo>> listed = session->List();
  ASSERT_TRUE(listed.ok());
  ASSERT_EQ(listed->size(), 1u);
  EXPECT_EQ((*listed)[0].version, 1u);
  EXPECT_EQ((*listed)[0].pin_count, 0u);
  ASSERT_TRUE(session->Free(info.object_id).ok());
  EXPECT_TRUE(session->List()->empty());
  EXPECT_TRUE(session->Close().ok());
  EXPECT_EQ(fake_->close_calls(), 1);
}

TEST_F(SessionTest, SpilldErrorsReachTheCaller) {
  std::unique_ptr<Session> session = Open();
  ObjectInfo info = Register(*session, "w", DType::kFloat32, 16);
  EXPECT_EQ(session->Register("w", ObjectKind::kMaster, DType::kFloat32, 16).status().code(),
            absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(session->Register("n", ObjectKind::kMaster, DType::kFloat32, -1).status().code(),
            absl::StatusCode::kInvalidArgument);
  absl::Status release = session->Release(info.object_id)->Wait(kWait);
  EXPECT_EQ(release.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(release.message(), "not pinned")) << release;
  EXPECT_EQ(session->Acquire(123456)->Wait(kWait).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(session->Free(123456).code(), absl::StatusCode::kNotFound);
}

TEST_F(SessionTest, TypedViewChecksTheDtype) {
  std::unique_ptr<Session> session = Open();
  ObjectInfo bf16 = Register(*session, "p", DType::kBFloat16, 8);
  EXPECT_EQ(session->Data<float>(bf16).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(session->Data<uint32_t>(bf16).status().code(), absl::StatusCode::kInvalidArgument);
  ObjectInfo f32 = Register(*session, "m", DType::kFloat32, 8);
  absl::StatusOr<absl::Span<float>> floats = session->Data<float>(f32);
  ASSERT_TRUE(floats.ok()) << floats.status();
  EXPECT_EQ(floats->size(), 8u);
  EXPECT_EQ(session->Data<double>(f32).status().code(), absl::StatusCode::kInvalidArgument);
  absl::StatusOr<absl::Span<uint8_t>> bytes = session->Bytes(f32);
  ASSERT_TRUE(bytes.ok());
  EXPECT_EQ(bytes->size(), 32u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(bytes->data()) % 256, 0u) << "offsets are aligned";

  ObjectInfo not_resident = f32;
  not_resident.location = {};
  absl::Status status = session->Bytes(not_resident).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(status.message(), "Acquire")) << status;
  ObjectInfo too_big = f32;
  too_big.num_elements = 1000;
  EXPECT_EQ(session->Bytes(too_big).status().code(), absl::StatusCode::kOutOfRange);
}

TEST_F(SessionTest, EachSegmentIsFetchedOnce) {
  std::unique_ptr<Session> session = Open();
  for (int i = 0; i < 5; ++i) {
    ObjectInfo info = Register(*session, "t" + std::to_string(i), DType::kUInt8, 100);
    ASSERT_TRUE(session->Bytes(info).ok());
  }
  EXPECT_EQ(fake_->segment_requests(), 1);
  MappingStats stats = session->mapping_stats();
  EXPECT_EQ(stats.segments_mapped, 1u);
  EXPECT_EQ(stats.bytes_mapped, 1u << 20);
  // Where a CUDA device exists (a GPU node) the one segment is registered
  // once; elsewhere the reason for skipping is given.
  if (stats.cuda_registered_bytes == 0) {
    EXPECT_FALSE(stats.cuda_skip_reason.empty());
  } else {
    EXPECT_EQ(stats.cuda_registered_bytes, 1u << 20);
    EXPECT_EQ(stats.cuda_registered_segments, 1u);
  }
}

TEST_F(SessionTest, AnUnsealedSegmentIsRefused) {
  fake_->SendUnsealedSegments(true);
  std::unique_ptr<Session> session = Open();
  ObjectInfo info = Register(*session, "t", DType::kUInt8, 100);
  absl::Status status = session->Bytes(info).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(status.message(), "sealed")) << status;
}

TEST_F(SessionTest, AnswersMayArriveInAnyOrder) {
  std::unique_ptr<Session> session = Open();
  std::vector<ObjectInfo> objects;
  for (int i = 0; i < 4; ++i) objects.push_back(Register(*session, "o" + std::to_string(i), DType::kInt32, 4));
  fake_->HoldAnswers(true);
  std::vector<std::shared_ptr<Work>> works;
  for (const ObjectInfo& o : objects) works.push_back(session->Acquire(o.object_id));
  works.push_back(session->Ping());
  const auto deadline = std::chrono::steady_clock::now() + kWait;
  while (fake_->held() < works.size() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(milliseconds(1));
  }
  ASSERT_EQ(fake_->held(), works.size()) << "the requests were not all sent";
  EXPECT_EQ(works[0]->Wait(milliseconds(20)).code(), absl::StatusCode::kDeadlineExceeded);
  fake_->HoldAnswers(false);
  fake_->AnswerHeld(/*reverse=*/true);
  for (size_t i = 0; i < objects.size(); ++i) {
    absl::StatusOr<ObjectInfo> got = works[i]->Get(kWait);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(got->object_id, objects[i].object_id);
  }
  EXPECT_TRUE(works.back()->Wait(kWait).ok());
}

TEST_F(SessionTest, CloseCancelsPendingWorkAndRefusesLaterRequests) {
  std::unique_ptr<Session> session = Open();
  ObjectInfo info = Register(*session, "w", DType::kFloat32, 4);
  fake_->HoldAnswers(true);
  std::shared_ptr<Work> pending = session->Acquire(info.object_id);
  EXPECT_TRUE(session->Close().ok());
  EXPECT_EQ(pending->Wait(kWait).code(), absl::StatusCode::kCancelled);

  absl::Status later = session->Ping()->Wait(milliseconds(0));
  EXPECT_EQ(later.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(later.message(), "closed")) << later;
  EXPECT_EQ(session->Register("x", ObjectKind::kOther, DType::kUInt8, 1).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(session->List().status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(session->Bytes(info).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(session->Close().ok()) << "closing twice is fine";
  EXPECT_EQ(fake_->close_calls(), 1);
}

TEST_F(SessionTest, ALostStreamFailsPendingAndLaterWorkWithUnavailable) {
  std::unique_ptr<Session> session = Open();
  ObjectInfo info = Register(*session, "w", DType::kFloat32, 4);
  fake_->HoldAnswers(true);
  std::shared_ptr<Work> pending = session->Acquire(info.object_id);
  const auto deadline = std::chrono::steady_clock::now() + kWait;
  while (fake_->held() < 1 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(milliseconds(1));
  }
  ASSERT_EQ(fake_->held(), 1u) << "the acquire was not sent";
  fake_->BreakStreams();
  absl::Status status = pending->Wait(kWait);
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(absl::StrContains(status.message(), fake_->socket_path())) << status;
  EXPECT_EQ(session->Ping()->Wait(kWait).code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(session->List().status().code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(session->Close().ok());
}

TEST_F(SessionTest, ADeadDaemonFailsWorkWithUnavailableNamingTheSocket) {
  std::unique_ptr<Session> session = Open();
  std::string path = fake_->socket_path();
  fake_->Stop();
  absl::Status status = session->Ping()->Wait(kWait);
  // The stream may not have noticed yet when Ping is written; either way the
  // Work fails with Unavailable naming the socket.
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
  EXPECT_TRUE(absl::StrContains(status.message(), path)) << status;
  session->Close().IgnoreError();
}

TEST_F(SessionTest, ASecondSessionReattachesToTheJobAndSeesItsBytes) {
  uint64_t id;
  {
    std::unique_ptr<Session> first = Open("job-b");
    ObjectInfo info = Register(*first, "state", DType::kInt64, 3);
    id = info.object_id;
    absl::StatusOr<ObjectInfo> pinned = first->Acquire(id)->Get(kWait);
    ASSERT_TRUE(pinned.ok());
    absl::StatusOr<absl::Span<int64_t>> data = first->Data<int64_t>(*pinned);
    ASSERT_TRUE(data.ok());
    (*data)[0] = 1;
    (*data)[1] = -2;
    (*data)[2] = 3;
    ASSERT_TRUE(first->WriteBack(id, 5)->Wait(kWait).ok());
    // No Release and no Close: the destructor closes, spilld drops the pin.
  }
  std::unique_ptr<Session> second = Open("job-b");
  EXPECT_TRUE(second->job_existed());
  absl::StatusOr<ObjectInfo> pinned = second->Acquire(id)->Get(kWait);
  ASSERT_TRUE(pinned.ok()) << pinned.status();
  EXPECT_EQ(pinned->version, 5u);
  EXPECT_EQ(pinned->pin_count, 1u) << "the first session's pin went with it";
  absl::StatusOr<absl::Span<int64_t>> data = second->Data<int64_t>(*pinned);
  ASSERT_TRUE(data.ok());
  EXPECT_EQ((*data)[1], -2);
  EXPECT_EQ(fake_->close_calls(), 1);
}

TEST_F(SessionTest, ConcurrentRequestsFromManyThreads) {
  std::unique_ptr<Session> session = Open();
  constexpr int kThreads = 4, kRounds = 100;
  std::vector<ObjectInfo> objects;
  for (int t = 0; t < kThreads; ++t) objects.push_back(Register(*session, "c" + std::to_string(t), DType::kUInt8, 64));
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kRounds; ++i) {
        auto acquire = session->Acquire(objects[t].object_id);
        auto ping = session->Ping();
        if (!acquire->Wait(kWait).ok() || !ping->Wait(kWait).ok()) failures++;
        if (!session->Bytes(acquire->object()).ok()) failures++;
        if (!session->Release(objects[t].object_id)->Wait(kWait).ok()) failures++;
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(failures, 0);
  EXPECT_TRUE(session->Close().ok());
}

// Nobody waits: the session's background thread writes the queued requests
// (one write is in flight at a time) and takes the answers. status() does
// not drive the stream, unlike Wait() and IsCompleted().
TEST_F(SessionTest, RequestsAreSentAndAnsweredWithNoThreadWaiting) {
  std::unique_ptr<Session> session = Open();
  ObjectInfo info = Register(*session, "q", DType::kUInt8, 16);
  fake_->HoldAnswers(true);
  std::vector<std::shared_ptr<Work>> works = {session->Acquire(info.object_id)};
  for (int i = 0; i < 50; ++i) works.push_back(session->Ping());
  const auto deadline = std::chrono::steady_clock::now() + kWait;
  while (fake_->held() < works.size() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(milliseconds(1));
  }
  ASSERT_EQ(fake_->held(), works.size()) << "queued requests were not all sent";
  fake_->HoldAnswers(false);
  fake_->AnswerHeld(/*reverse=*/false);
  auto all_answered = [&] {
    for (const auto& w : works) {
      if (w->status().code() == absl::StatusCode::kFailedPrecondition) return false;
    }
    return true;
  };
  while (!all_answered() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(milliseconds(1));
  }
  for (const auto& w : works) EXPECT_TRUE(w->status().ok()) << w->status();
  EXPECT_GT(works.front()->completed_at(), works.front()->sent_at());
}

TEST_F(SessionTest, AStreamLostWhileIdleIsNoticedWithoutARequest) {
  std::unique_ptr<Session> session = Open();
  ASSERT_TRUE(session->List().ok());
  fake_->BreakStreams();
  // List is a unary call: it fails only once the session knows its stream
  // is gone, which the background thread finds out while nothing is sent.
  absl::Status status;
  const auto deadline = std::chrono::steady_clock::now() + kWait;
  do {
    std::this_thread::sleep_for(milliseconds(1));
    status = session->List().status();
  } while (status.ok() && std::chrono::steady_clock::now() < deadline);
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
  EXPECT_TRUE(session->Close().ok());
}

// Submitting threads race Close: each Work ends (answered, cancelled or
// refused) and nothing is written to a stream Close has torn down.
TEST_F(SessionTest, CloseWhileOtherThreadsSubmit) {
  for (int round = 0; round < 20; ++round) {
    std::unique_ptr<Session> session = Open();
    ASSERT_NE(session, nullptr);
    std::atomic<bool> stop{false};
    std::atomic<int> unfinished{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t) {
      threads.emplace_back([&] {
        while (!stop.load()) {
          std::shared_ptr<Work> w = session->Ping();
          if (!w->Wait(kWait).ok() && !w->IsCompleted()) unfinished++;
        }
      });
    }
    std::this_thread::sleep_for(milliseconds(2 + round % 5));
    EXPECT_TRUE(session->Close().ok());
    stop = true;
    for (auto& thread : threads) thread.join();
    EXPECT_EQ(unfinished, 0);
  }
}

TEST_F(SessionTest, AWorkOutlivesItsSession) {
  std::shared_ptr<Work> work;
  {
    std::unique_ptr<Session> session = Open();
    fake_->HoldAnswers(true);
    work = session->Ping();
  }
  EXPECT_EQ(work->Wait(milliseconds(0)).code(), absl::StatusCode::kCancelled);
}

}  // namespace
}  // namespace spill::client
