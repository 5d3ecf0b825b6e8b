#include "worker/checkpoint.h"

#include <stdlib.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "worker/safetensors.h"
#include "worker/testing/checkpoint_test_util.h"

namespace spill::worker {
namespace {

namespace fs = std::filesystem;
using testing_util::CheckpointTest;
using testing_util::Full;
using testing_util::kStates;
using testing_util::ReadAll;
using testing_util::Resplit;
using testing_util::TestMeta;

TEST_F(CheckpointTest, RoundTripOneAndTwoRanks) {
  for (int world : {1, 2}) {
    const std::string tag = absl::StrCat("w", world);
    CkptMeta meta = TestMeta(world, 10 + world);
    Save(tag, meta);
    EXPECT_EQ(Latest(), tag + "\n");
    auto back = ReadCheckpointMeta(dir_, "");
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_EQ(back->world_size, world);
    EXPECT_EQ(back->step, 10 + world);
    EXPECT_EQ(back->states, kStates);
    ASSERT_EQ(back->layers.size(), meta.layers.size());
    for (size_t l = 0; l < meta.layers.size(); ++l) {
      EXPECT_EQ(back->layers[l].name, meta.layers[l].name);
      EXPECT_EQ(back->layers[l].numel, meta.layers[l].numel);
      ASSERT_EQ(back->layers[l].params.size(), meta.layers[l].params.size());
      for (size_t p = 0; p < meta.layers[l].params.size(); ++p) {
        EXPECT_EQ(back->layers[l].params[p].name, meta.layers[l].params[p].name);
        EXPECT_EQ(back->layers[l].params[p].shape, meta.layers[l].params[p].shape);
        EXPECT_EQ(back->layers[l].params[p].offset, meta.layers[l].params[p].offset);
      }
    }
    EXPECT_EQ(nlohmann::json::parse(back->engine_state_json),
              nlohmann::json::parse(meta.engine_state_json));
    ExpectResharded(meta, world);
    // The one-shot free function agrees.
    auto one = ReadShard(dir_, tag, *back, "block.0", "exp_avg", world - 1, world);
    ASSERT_TRUE(one.ok()) << one.status();
    EXPECT_EQ(*one, Resplit(Full(meta, 1, 1), world - 1, world));
  }
  auto tagged = ResolveCheckpointTag(dir_, "w1");
  ASSERT_TRUE(tagged.ok());
  EXPECT_EQ(*tagged, "w1");
}

TEST_F(CheckpointTest, ReshardsIntoOtherWorldSizes) {
  const std::vector<std::pair<int, int>> moves = {{2, 1}, {2, 3}, {3, 2}, {4, 3}, {1, 4}, {3, 7}};
  for (const auto& [from, to] : moves) {
    SCOPED_TRACE(absl::StrCat(from, " -> ", to));
    CkptMeta meta = TestMeta(from, from * 100 + to);
    Save(absl::StrCat("from", from, "to", to), meta);
    ExpectResharded(meta, to);
  }
}

TEST_F(CheckpointTest, ReadIntoCallerBufferAndBadRequests) {
  CkptMeta meta = TestMeta(2, 3);
  Save("t", meta);
  auto reader = CheckpointReader::Open(dir_, "t");
  ASSERT_TRUE(reader.ok());
  std::vector<float> buf(static_cast<size_t>(ShardElements(101, 3)), 99.0f);
  ASSERT_TRUE(reader->ReadShardInto("block.0", "master", 2, 3, absl::MakeSpan(buf)).ok());
  EXPECT_EQ(buf.front(), Full(meta, 1, 0)[68]);
  EXPECT_EQ(buf.back(), 0.0f);  // padding
  EXPECT_EQ(reader->ReadShardInto("block.0", "master", 0, 2, absl::MakeSpan(buf)).code(),
            absl::StatusCode::kInvalidArgument);
  auto s = reader->ReadShard("block.9", "master", 0, 1).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_HAS(s, "block.9");
  s = reader->ReadShard("block.0", "momentum", 0, 1).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_HAS(s, "momentum");
  EXPECT_EQ(reader->ReadShard("block.0", "master", 3, 3).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(reader->ReadShard("block.0", "master", 0, 0).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(CheckpointTest, IncompleteCheckpointIsRefused) {
  CkptMeta meta = TestMeta(2, 5);
  for (int r = 0; r < 2; ++r) ASSERT_TRUE(WriteRank("half", meta, r).ok());
  auto tag = ResolveCheckpointTag(dir_, "half");
  EXPECT_EQ(tag.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_HAS(tag.status(), "checkpoint " + dir_ + "/half was not completed");
  EXPECT_EQ(ReadCheckpointMeta(dir_, "half").status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(CheckpointReader::Open(dir_, "half").status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(
      ConsolidateCheckpoint(dir_, "half", root_ + "/out.safetensors", CkptDType::kFp32).code(),
      absl::StatusCode::kFailedPrecondition);
  EXPECT_FALSE(fs::exists(root_ + "/out.safetensors"));
  // No latest at all, or a latest naming nothing.
  auto none = ResolveCheckpointTag(dir_, "");
  EXPECT_EQ(none.status().code(), absl::StatusCode::kNotFound);
  EXPECT_HAS(none.status(), "no checkpoint in " + dir_);
  EXPECT_EQ(ResolveCheckpointTag(dir_, "gone").status().code(), absl::StatusCode::kNotFound);
  { std::ofstream(dir_ + "/latest") << "../etc\n"; }
  EXPECT_EQ(ResolveCheckpointTag(dir_, "").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(CheckpointTest, PublishWithMissingOrBadRankFilePublishesNothing) {
  Save("old", TestMeta(2, 1));
  CkptMeta meta = TestMeta(3, 2);
  ASSERT_TRUE(WriteRank("new", meta, 0).ok());
  ASSERT_TRUE(WriteRank("new", meta, 2).ok());
  absl::Status s = PublishCheckpoint(dir_, "new", meta);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_HAS(s, TagFile("new", "rank_1_of_3.safetensors"));
  EXPECT_FALSE(fs::exists(TagFile("new", "meta.json")));
  EXPECT_FALSE(fs::exists(TagFile("new", "COMPLETE")));
  EXPECT_EQ(Latest(), "old\n");

  // Rank 1 wrote a different step: also refused.
  CkptMeta other = meta;
  other.step = 99;
  ASSERT_TRUE(WriteRank("new", other, 1).ok());
  s = PublishCheckpoint(dir_, "new", meta);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_HAS(s, "metadata step is 99, expected 2");
  // A corrupt rank file.
  ASSERT_TRUE(WriteRank("new", meta, 1).ok());
  fs::resize_file(TagFile("new", "rank_2_of_3.safetensors"), 100);
  s = PublishCheckpoint(dir_, "new", meta);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_HAS(s, "rank_2_of_3.safetensors");
  EXPECT_EQ(Latest(), "old\n");
  // A meta with another layer list than the files.
  ASSERT_TRUE(WriteRank("new", meta, 2).ok());
  CkptMeta more = meta;
  more.layers.push_back({"extra", 4, {}});
  s = PublishCheckpoint(dir_, "new", more);
  EXPECT_HAS(s, "tensor 'extra/master' is missing");
  EXPECT_EQ(Latest(), "old\n");
  ASSERT_TRUE(PublishCheckpoint(dir_, "new", meta).ok());
  EXPECT_EQ(Latest(), "new\n");
}

TEST_F(CheckpointTest, PublishedCheckpointIsNotOverwritten) {
  CkptMeta meta = TestMeta(1, 4);
  Save("done", meta);
  const std::string before = ReadAll(TagFile("done", "rank_0_of_1.safetensors"));
  CkptMeta later = TestMeta(1, 5);
  EXPECT_EQ(WriteRank("done", later, 0).code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(PublishCheckpoint(dir_, "done", meta).code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(ReadAll(TagFile("done", "rank_0_of_1.safetensors")), before);
}

TEST_F(CheckpointTest, WriteRankShardRejectsBadInput) {
  CkptMeta meta = TestMeta(2, 1);
  std::vector<float> a(19), b(51), c(1);
  std::vector<CkptArray> arrays;
  auto all = [&]() {
    std::vector<CkptArray> v;
    for (const std::string& s : kStates) {
      v.push_back({"embedding", s, a});
      v.push_back({"block.0", s, b});
      v.push_back({"tiny", s, c});
      v.push_back({"empty", s, {}});
    }
    return v;
  };
  ASSERT_TRUE(WriteRankShard(dir_, "ok", 1, meta, all()).ok());
  auto expect_bad = [&](const std::vector<CkptArray>& arrays, int rank, const std::string& tag,
                        const std::string& what) {
    const absl::Status s = WriteRankShard(dir_, tag, rank, meta, arrays);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << what << ": " << s;
    EXPECT_HAS(s, what);
  };
  std::vector<CkptArray> v = all();
  v.pop_back();
  expect_bad(v, 0, "bad", "'empty/exp_avg_sq' is missing");
  v = all();
  v.push_back({"tiny", "master", c});
  expect_bad(v, 0, "bad", "'tiny/master' given twice");
  v = all();
  v.push_back({"tiny", "velocity", c});
  expect_bad(v, 0, "bad", "'tiny/velocity' is not a layer/state");
  v = all();
  v[1].data = absl::MakeConstSpan(b).subspan(1);
  expect_bad(v, 0, "bad", "'block.0/master' has 50 elements");
  expect_bad(all(), 2, "bad", "rank 2 is outside [0, 2)");
  expect_bad(all(), 0, "a/b", "checkpoint tag 'a/b'");
  expect_bad(all(), 0, "..", "checkpoint tag '..'");
  EXPECT_FALSE(fs::exists(dir_ + "/bad"));
}

TEST_F(CheckpointTest, ValidateMetaNamesTheProblem) {
  auto expect_bad = [](const CkptMeta& m, const std::string& what) {
    const absl::Status s = ValidateCkptMeta(m);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << what;
    EXPECT_HAS(s, what);
  };
  EXPECT_TRUE(ValidateCkptMeta(TestMeta(2, 0)).ok());
  CkptMeta m = TestMeta(0, 0);
  expect_bad(m, "world_size 0");
  m = TestMeta(1, -1);
  expect_bad(m, "step -1");
  m = TestMeta(1, 0);
  m.states = {"master", "master"};
  expect_bad(m, "state name 'master'");
  m = TestMeta(1, 0);
  m.states = {};
  expect_bad(m, "no states");
  m = TestMeta(1, 0);
  m.layers[1].name = "embedding";
  expect_bad(m, "layer name 'embedding'");
  m = TestMeta(1, 0);
  m.layers[1].params[1].offset = 99;
  expect_bad(m, "overlapping parameters");
  m = TestMeta(1, 0);
  m.layers[1].params[1].offset = 101;
  expect_bad(m, "parameter 'block.0.b' of layer 'block.0': elements [101, 102)");
  m = TestMeta(1, 0);
  m.layers[2].params[0].name = "wte";
  expect_bad(m, "parameter 'wte' of layer 'tiny': empty or duplicate");
  m = TestMeta(1, 0);
  m.engine_state_json = "[1]";
  expect_bad(m, "engine_state_json is not a JSON object");
}

TEST_F(CheckpointTest, DamagedRankFilesAreDataLossNamingTheFile) {
  CkptMeta meta = TestMeta(2, 8);
  Save("t", meta);
  const std::string r1 = TagFile("t", "rank_1_of_2.safetensors");
  const std::string good = ReadAll(r1);
  auto expect_loss = [&](const std::string& what) {
    const auto reader = CheckpointReader::Open(dir_, "t");
    EXPECT_EQ(reader.status().code(), absl::StatusCode::kDataLoss)
        << what << ": " << reader.status();
    EXPECT_HAS(reader.status(), r1);
    std::ofstream(r1, std::ios::binary) << good;
  };
  fs::resize_file(r1, good.size() - 3);
  expect_loss("truncated");
  { std::ofstream(r1, std::ios::binary) << std::string(4096, '\x5a'); }
  expect_loss("garbage");
  {
    std::string bad = good;
    bad[8] = 'x';  // the header's opening brace
    std::ofstream(r1, std::ios::binary) << bad;
  }
  expect_loss("corrupt header");
  fs::remove(r1);
  expect_loss("missing");
  // Shrunk after Open: the read names file and tensor.
  auto reader = CheckpointReader::Open(dir_, "t");
  ASSERT_TRUE(reader.ok()) << reader.status();
  fs::resize_file(r1, 64);
  const absl::Status s = reader->ReadShard("block.0", "master", 0, 1).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
  EXPECT_HAS(s, r1);
  EXPECT_HAS(s, "'block.0/master'");
}

// Flips one bit of element `element` of tensor `name` in the rank file.
void FlipBit(const std::string& path, const std::string& name, int64_t element) {
  auto f = SafetensorsFile::Open(path);
  ASSERT_TRUE(f.ok()) << f.status();
  const uint64_t begin = f->Find(name)->begin;
  std::string bytes = ReadAll(path);
  uint64_t header = 0;
  std::memcpy(&header, bytes.data(), 8);
  bytes[8 + header + begin + static_cast<uint64_t>(element) * 4] ^= 0x10;
  std::ofstream(path, std::ios::binary) << bytes;
}

TEST_F(CheckpointTest, CorruptDataFailsTheChecksum) {
  CkptMeta meta = TestMeta(2, 6);
  Save("t", meta);
  const std::string r0 = TagFile("t", "rank_0_of_2.safetensors");
  const std::string r1 = TagFile("t", "rank_1_of_2.safetensors");
  FlipBit(r0, "block.0/exp_avg", 17);
  auto reader = CheckpointReader::Open(dir_, "t");
  ASSERT_TRUE(reader.ok()) << reader.status();
  absl::Status s = reader->ReadShard("block.0", "exp_avg", 0, 2).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_HAS(s, r0);
  EXPECT_HAS(s, "tensor 'block.0/exp_avg' has CRC32C");
  // Other tensors still read; a re-sharding read of part of the tensor is not
  // checked (only whole-tensor reads are).
  EXPECT_TRUE(reader->ReadShard("block.0", "master", 0, 2).ok());
  EXPECT_TRUE(reader->ReadShard("block.0", "exp_avg", 1, 3).ok());
  // A flipped bit in the padding of the last rank is caught too.
  FlipBit(r1, "embedding/master",
          18);  // 37 over 2: rank 1 holds 18 + 1 padding
  s = reader->ReadShard("embedding", "master", 1, 2).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_HAS(s, r1);
  // Consolidation reads whole tensors: refused, nothing written.
  const std::string out = root_ + "/out.safetensors";
  s = ConsolidateCheckpoint(dir_, "t", out, CkptDType::kFp32);
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_FALSE(fs::exists(out));
}

TEST_F(CheckpointTest, CorruptMetaIsDataLoss) {
  Save("t", TestMeta(1, 1));
  { std::ofstream(TagFile("t", "meta.json")) << "{\"format\": \"spill-zero3\""; }
  auto m = ReadCheckpointMeta(dir_, "t");
  EXPECT_EQ(m.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_HAS(m.status(), TagFile("t", "meta.json"));
  { std::ofstream(TagFile("t", "meta.json")) << R"({"format": "spill-zero3", "version": 1})"; }
  EXPECT_EQ(ReadCheckpointMeta(dir_, "t").status().code(), absl::StatusCode::kDataLoss);
}

}  // namespace
}  // namespace spill::worker
