#include "worker/data.h"

#include <cstdlib>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace spill::worker {
namespace {

using ::testing::HasSubstr;

TEST(ByteDatasetTest, DefaultDataLoadsAndBatchesAreShiftedByOne) {
  auto data = ByteDataset::Open(DefaultDataPath());
  ASSERT_TRUE(data.ok()) << data.status();
  EXPECT_GT(data->size(), 10'000);
  auto b = data->Batch(3, 1, 4, 64);
  ASSERT_TRUE(b.ok()) << b.status();
  ASSERT_EQ(b->tokens.size(), 4u * 64);
  for (int64_t i = 0; i < 4; ++i) {
    for (int64_t t = 0; t + 1 < 64; ++t) {
      EXPECT_EQ(b->targets[i * 64 + t], b->tokens[i * 64 + t + 1]);
    }
  }
  for (int64_t v : b->tokens) EXPECT_TRUE(v >= 0 && v < 256);
}

TEST(ByteDatasetTest, DefaultDataFollowsSpillTrainData) {
  const char* outer = std::getenv("SPILL_TRAIN_DATA");
  const std::string saved = outer != nullptr ? outer : "";
  unsetenv("SPILL_TRAIN_DATA");
  const std::string built_in = DefaultDataPath();
  ASSERT_EQ(setenv("SPILL_TRAIN_DATA", "/nonexistent/corpus.txt", 1), 0);
  EXPECT_EQ(DefaultDataPath(), "/nonexistent/corpus.txt");
  auto missing = ByteDataset::Open(DefaultDataPath());
  EXPECT_FALSE(missing.ok());
  EXPECT_THAT(std::string(missing.status().message()), ::testing::HasSubstr("/nonexistent/corpus.txt"));
  ASSERT_EQ(setenv("SPILL_TRAIN_DATA", "", 1), 0);  // Empty: the built-in path.
  EXPECT_EQ(DefaultDataPath(), built_in);
  if (saved.empty()) unsetenv("SPILL_TRAIN_DATA");
  else setenv("SPILL_TRAIN_DATA", saved.c_str(), 1);
}

TEST(ByteDatasetTest, DeterministicAndRankDependent) {
  ByteDataset data = ByteDataset::FromBytes(std::string(5000, 'a') + std::string(5000, 'b') +
                                            "0123456789abcdefghijklmnopqrstuvwxyz");
  auto a = data.Batch(7, 0, 8, 16);
  auto again = data.Batch(7, 0, 8, 16);
  auto other_rank = data.Batch(7, 1, 8, 16);
  ASSERT_TRUE(a.ok() && again.ok() && other_rank.ok());
  EXPECT_EQ(a->tokens, again->tokens);
  EXPECT_NE(a->tokens, other_rank->tokens);
}

TEST(ByteDatasetTest, BadRequestsAndFiles) {
  ByteDataset data = ByteDataset::FromBytes("hello");
  EXPECT_THAT(std::string(data.Batch(0, 0, 1, 5).status().message()), HasSubstr("needs 6 bytes"));
  EXPECT_THAT(std::string(data.Batch(0, 0, 0, 2).status().message()), HasSubstr("batch=0"));
  auto missing = ByteDataset::Open("/nonexistent/corpus.txt");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr("/nonexistent/corpus.txt"));
}

}  // namespace
}  // namespace spill::worker
