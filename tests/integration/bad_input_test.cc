// A table of bad requests against a real spilld over raw gRPC: each gets the
// right status code and a message, and spilld's state (seen through the
// admin service) is the same afterwards.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <functional>

#include "tests/integration/spilld_process.h"

namespace spill::testing {
namespace {

using spill::v1::DType;
using spill::v1::ObjectKind;
using std::chrono::seconds;

std::unique_ptr<grpc::ClientContext> Ctx() {
  auto ctx = std::make_unique<grpc::ClientContext>();
  ctx->set_deadline(std::chrono::system_clock::now() + seconds(10));
  return ctx;
}

// Admin-visible state that no bad request may change.
std::string StateOf(SpilldProcess& d) {
  auto stats = d.Stats();
  auto jobs = d.Jobs();
  EXPECT_TRUE(stats.ok() && jobs.ok());
  std::string out;
  for (const auto& t : stats->tiers()) {
    out += t.name() + " used=" + std::to_string(t.used_bytes()) + ";";
    for (const auto& j : t.jobs()) out += j.job_id() + "=" + std::to_string(j.used_bytes()) + ";";
  }
  for (const auto& j : jobs->jobs()) {
    out += j.job_id() + " objects=" + std::to_string(j.objects()) +
           " sessions=" + std::to_string(j.sessions_size()) + " state=" + j.state() + ";";
    for (const auto& s : j.sessions()) out += " pins=" + std::to_string(s.pins());
  }
  return out;
}

class BadInputTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto d = SpilldProcess::Start({"--job-pinned-quota=1MiB"});
    ASSERT_TRUE(d.ok()) << d.status();
    d_ = std::move(*d);
    session_ = Open("job-a");
    other_ = Open("job-b");
    spill::v1::RegisterObjectRequest req;
    *req.mutable_session() = session_;
    req.set_name("w");
    req.set_kind(ObjectKind::OBJECT_KIND_PARAM_SHARD);
    req.set_dtype(DType::DTYPE_FLOAT32);
    req.set_num_elements(1000);
    spill::v1::RegisterObjectResponse resp;
    ASSERT_TRUE(d_->worker().RegisterObject(Ctx().get(), req, &resp).ok());
    object_id_ = resp.object().object_id();
  }
  void TearDown() override {
    if (d_) EXPECT_EQ(d_->Stop(), 0) << d_->output();
  }

  spill::v1::SessionRef Open(const std::string& job) {
    spill::v1::OpenSessionRequest req;
    req.set_job_id(job);
    req.set_world_size(1);
    spill::v1::OpenSessionResponse resp;
    grpc::Status s = d_->worker().OpenSession(Ctx().get(), req, &resp);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return resp.session();
  }

  grpc::Status Register(const spill::v1::SessionRef& ref, const std::string& name, int kind,
                        int dtype, int64_t n) {
    spill::v1::RegisterObjectRequest req;
    *req.mutable_session() = ref;
    req.set_name(name);
    req.set_kind(static_cast<ObjectKind>(kind));
    req.set_dtype(static_cast<DType>(dtype));
    req.set_num_elements(n);
    spill::v1::RegisterObjectResponse resp;
    return d_->worker().RegisterObject(Ctx().get(), req, &resp);
  }

  grpc::Status Free(const spill::v1::SessionRef& ref, uint64_t id) {
    spill::v1::FreeObjectRequest req;
    *req.mutable_session() = ref;
    req.set_object_id(id);
    spill::v1::FreeObjectResponse resp;
    return d_->worker().FreeObject(Ctx().get(), req, &resp);
  }

  std::unique_ptr<SpilldProcess> d_;
  spill::v1::SessionRef session_, other_;
  uint64_t object_id_ = 0;
};

TEST_F(BadInputTest, UnaryTable) {
  spill::v1::SessionRef wrong_token = session_;
  wrong_token.set_token(std::string(16, '\0'));
  spill::v1::SessionRef short_token = session_;
  short_token.set_token("abc");
  spill::v1::SessionRef unknown = session_;
  unknown.set_session_id(999999);
  const std::string before = StateOf(*d_);
  struct Case {
    std::string what;
    std::function<grpc::Status()> call;
    grpc::StatusCode code;
  } cases[] = {
      {"zero elements", [&] { return Register(session_, "z", 1, 1, 0); },
       grpc::StatusCode::INVALID_ARGUMENT},
      {"negative elements", [&] { return Register(session_, "z", 1, 1, -7); },
       grpc::StatusCode::INVALID_ARGUMENT},
      {"huge elements", [&] { return Register(session_, "z", 1, 1, int64_t{1} << 62); },
       grpc::StatusCode::OUT_OF_RANGE},
      {"past quota", [&] { return Register(session_, "z", 1, 1, 300000); },
       grpc::StatusCode::RESOURCE_EXHAUSTED},
      {"bad dtype", [&] { return Register(session_, "z", 1, 42, 10); },
       grpc::StatusCode::INVALID_ARGUMENT},
      {"unspecified dtype", [&] { return Register(session_, "z", 1, 0, 10); },
       grpc::StatusCode::INVALID_ARGUMENT},
      {"bad kind", [&] { return Register(session_, "z", 9, 1, 10); },
       grpc::StatusCode::INVALID_ARGUMENT},
      {"empty name", [&] { return Register(session_, "", 1, 1, 10); },
       grpc::StatusCode::INVALID_ARGUMENT},
      {"duplicate name", [&] { return Register(session_, "w", 1, 1, 10); },
       grpc::StatusCode::ALREADY_EXISTS},
      {"wrong token", [&] { return Register(wrong_token, "z", 1, 1, 10); },
       grpc::StatusCode::UNAUTHENTICATED},
      {"short token", [&] { return Register(short_token, "z", 1, 1, 10); },
       grpc::StatusCode::INVALID_ARGUMENT},
      {"unknown session", [&] { return Register(unknown, "z", 1, 1, 10); },
       grpc::StatusCode::NOT_FOUND},
      {"free unknown id", [&] { return Free(session_, 123456); }, grpc::StatusCode::NOT_FOUND},
      {"free other job's object", [&] { return Free(other_, object_id_); },
       grpc::StatusCode::NOT_FOUND},
      {"oversized message",
       [&] { return Register(session_, std::string(200 * 1024, 'n'), 1, 1, 10); },
       grpc::StatusCode::RESOURCE_EXHAUSTED},
      {"open with empty job", [&] {
         spill::v1::OpenSessionRequest req;
         req.set_world_size(1);
         spill::v1::OpenSessionResponse resp;
         return d_->worker().OpenSession(Ctx().get(), req, &resp);
       }, grpc::StatusCode::INVALID_ARGUMENT},
      {"open with rank >= world", [&] {
         spill::v1::OpenSessionRequest req;
         req.set_job_id("x");
         req.set_rank(4);
         req.set_world_size(2);
         spill::v1::OpenSessionResponse resp;
         return d_->worker().OpenSession(Ctx().get(), req, &resp);
       }, grpc::StatusCode::INVALID_ARGUMENT},
      {"open job-a with another world size", [&] {
         spill::v1::OpenSessionRequest req;
         req.set_job_id("job-a");
         req.set_world_size(8);
         spill::v1::OpenSessionResponse resp;
         return d_->worker().OpenSession(Ctx().get(), req, &resp);
       }, grpc::StatusCode::FAILED_PRECONDITION},
  };
  for (const Case& c : cases) {
    grpc::Status s = c.call();
    EXPECT_EQ(s.error_code(), c.code) << c.what << ": " << s.error_message();
    EXPECT_FALSE(s.error_message().empty()) << c.what;
    EXPECT_EQ(StateOf(*d_), before) << c.what << " changed spilld's state";
  }
}

TEST_F(BadInputTest, QuotaMessageNamesQuotaAndUse) {
  grpc::Status s = Register(session_, "big", 1, 1, 300000);
  ASSERT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_NE(s.error_message().find("quota is 1.0 MiB"), std::string::npos) << s.error_message();
  EXPECT_NE(s.error_message().find("4000 B) in use"), std::string::npos) << s.error_message();
}

TEST_F(BadInputTest, RequestsAfterCloseFail) {
  spill::v1::CloseSessionRequest req;
  *req.mutable_session() = session_;
  spill::v1::CloseSessionResponse resp;
  ASSERT_TRUE(d_->worker().CloseSession(Ctx().get(), req, &resp).ok());
  const std::string before = StateOf(*d_);
  EXPECT_EQ(Register(session_, "late", 1, 1, 10).error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(Free(session_, object_id_).error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(d_->worker().CloseSession(Ctx().get(), req, &resp).error_code(),
            grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(StateOf(*d_), before);
}

// Sends stream requests and collects the event for each tag.
class RawStream {
 public:
  RawStream(spill::v1::Worker::Stub& stub) {
    ctx_.set_deadline(std::chrono::system_clock::now() + seconds(20));
    stream_ = stub.Session(&ctx_);
  }
  spill::v1::StreamEvent Call(spill::v1::StreamRequest req) {
    EXPECT_TRUE(stream_->Write(req));
    spill::v1::StreamEvent ev;
    EXPECT_TRUE(stream_->Read(&ev));
    EXPECT_EQ(ev.tag(), req.tag());
    return ev;
  }
  grpc::Status Close() {
    stream_->WritesDone();
    spill::v1::StreamEvent ev;
    while (stream_->Read(&ev)) {
    }
    return stream_->Finish();
  }
  grpc::ClientContext ctx_;
  std::unique_ptr<grpc::ClientReaderWriter<spill::v1::StreamRequest, spill::v1::StreamEvent>>
      stream_;
};

TEST_F(BadInputTest, StreamTable) {
  RawStream stream(d_->worker());
  spill::v1::StreamRequest before_attach;
  before_attach.set_tag(1);
  before_attach.mutable_acquire()->set_object_id(object_id_);
  auto ev = stream.Call(before_attach);
  EXPECT_EQ(ev.code(), grpc::StatusCode::FAILED_PRECONDITION) << ev.message();
  EXPECT_NE(ev.message().find("attach"), std::string::npos);

  spill::v1::StreamRequest attach;
  attach.set_tag(2);
  *attach.mutable_attach()->mutable_session() = session_;
  ASSERT_EQ(stream.Call(attach).code(), 0);
  const std::string state = StateOf(*d_);
  struct Case {
    std::string what;
    std::function<void(spill::v1::StreamRequest*)> fill;
    int code;
  } cases[] = {
      {"no op", [](spill::v1::StreamRequest*) {}, grpc::StatusCode::INVALID_ARGUMENT},
      {"acquire unknown", [](auto* r) { r->mutable_acquire()->set_object_id(424242); },
       grpc::StatusCode::NOT_FOUND},
      {"release unpinned", [&](auto* r) { r->mutable_release()->set_object_id(object_id_); },
       grpc::StatusCode::FAILED_PRECONDITION},
      {"write-back unpinned",
       [&](auto* r) { r->mutable_write_back()->set_object_id(object_id_); },
       grpc::StatusCode::FAILED_PRECONDITION},
      {"prefetch unknown", [](auto* r) { r->mutable_prefetch()->set_object_id(7777); },
       grpc::StatusCode::NOT_FOUND},
      {"second attach", [&](auto* r) { *r->mutable_attach()->mutable_session() = session_; },
       grpc::StatusCode::FAILED_PRECONDITION},
      {"unknown step mode",
       [](auto* r) {
         r->mutable_optimizer_step()->set_group_id(1);
         r->mutable_optimizer_step()->set_step(1);
         r->mutable_optimizer_step()->set_grad_scale(1.0f);
         r->mutable_optimizer_step()->set_mode(static_cast<spill::v1::StepMode>(9));
       },
       grpc::StatusCode::INVALID_ARGUMENT},
  };
  uint64_t tag = 10;
  for (const Case& c : cases) {
    spill::v1::StreamRequest req;
    req.set_tag(++tag);
    c.fill(&req);
    auto event = stream.Call(req);
    EXPECT_EQ(event.code(), c.code) << c.what << ": " << event.message();
    EXPECT_FALSE(event.message().empty()) << c.what;
    EXPECT_FALSE(event.has_object()) << c.what;
    EXPECT_EQ(StateOf(*d_), state) << c.what << " changed spilld's state";
  }
  EXPECT_TRUE(stream.Close().ok());
}

TEST_F(BadInputTest, AttachWithWrongTokenEndsTheStream) {
  RawStream stream(d_->worker());
  spill::v1::StreamRequest attach;
  attach.set_tag(5);
  *attach.mutable_attach()->mutable_session() = session_;
  attach.mutable_attach()->mutable_session()->set_token(std::string(16, 'x'));
  auto ev = stream.Call(attach);
  EXPECT_EQ(ev.code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_TRUE(stream.Close().ok());
}

TEST_F(BadInputTest, GarbageBytesOnTheSocketAreDropped) {
  const std::string before = StateOf(*d_);
  for (const std::string& junk :
       {std::string("GET / HTTP/1.1\r\n\r\n"), std::string("PRI * garbage that is no preface"),
        std::string("SPILLFD1short"), std::string(4096, '\xff'), std::string()}) {
    int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strcpy(addr.sun_path, d_->socket_path().c_str());
    ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    if (!junk.empty()) (void)!::write(fd, junk.data(), junk.size());
    ::shutdown(fd, SHUT_WR);
    char buf[256];
    while (::read(fd, buf, sizeof(buf)) > 0) {
    }
    ::close(fd);
  }
  EXPECT_EQ(StateOf(*d_), before);
  spill::v1::HealthResponse health;
  ASSERT_TRUE(d_->admin().Health(Ctx().get(), {}, &health).ok());
  EXPECT_EQ(health.status(), "SERVING");
}

}  // namespace
}  // namespace spill::testing
