#include "storage/eviction_policy.h"

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace spill::storage {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;

std::vector<uint64_t> Ids(const std::vector<EvictionCandidate>& ranked) {
  std::vector<uint64_t> ids;
  for (const auto& c : ranked) ids.push_back(c.key.id);
  return ids;
}

std::vector<EvictionCandidate> Clean(const std::string& job, std::vector<uint64_t> ids,
                                     uint64_t bytes = 1) {
  std::vector<EvictionCandidate> out;
  for (uint64_t id : ids) out.push_back({{job, id}, bytes, false});
  return out;
}

// Runs trace through a cache of `frames` unit-size objects of one job and
// returns the number of misses. With use_order, the whole trace is the
// job's access order (the client knows its step); else plain LRU.
int CountMisses(const std::vector<uint64_t>& trace, size_t frames, bool use_order) {
  EvictionPolicy policy;
  if (use_order) policy.SetAccessOrder("j", trace);
  std::vector<uint64_t> resident;
  int misses = 0;
  for (uint64_t id : trace) {
    if (std::find(resident.begin(), resident.end(), id) == resident.end()) {
      ++misses;
      if (resident.size() == frames) {
        std::vector<ObjectKey> victims = policy.ChooseVictims(Clean("j", resident), 1);
        EXPECT_EQ(victims.size(), 1u);
        if (victims.empty()) return -1;
        resident.erase(std::find(resident.begin(), resident.end(), victims[0].id));
      }
      resident.push_back(id);
    }
    policy.Touch({"j", id});
  }
  return misses;
}

TEST(EvictionPolicyTest, BeladyBeatsLruOnTextbookTrace) {
  // The classic reference string with 3 frames: optimal 9 faults, LRU 12.
  const std::vector<uint64_t> trace = {7, 0, 1, 2, 0, 3, 0, 4, 2, 3,
                                       0, 3, 2, 1, 2, 0, 1, 7, 0, 1};
  EXPECT_EQ(CountMisses(trace, 3, /*use_order=*/true), 9);
  EXPECT_EQ(CountMisses(trace, 3, /*use_order=*/false), 12);
}

TEST(EvictionPolicyTest, CyclicScanKeepsWhatFitsUnderOrder) {
  // A loop over 5 objects with 4 frames: LRU misses every access, furthest
  // next use misses far fewer.
  std::vector<uint64_t> trace;
  for (int r = 0; r < 4; ++r)
    for (uint64_t id = 1; id <= 5; ++id) trace.push_back(id);
  EXPECT_EQ(CountMisses(trace, 4, false), 20);
  // The optimal count for this trace (found by exhaustive furthest-use
  // simulation): 4 cold misses and 4 more.
  EXPECT_EQ(CountMisses(trace, 4, true), 8);
}

TEST(EvictionPolicyTest, LruWithoutOrder) {
  EvictionPolicy policy;
  for (uint64_t id : {3, 1, 2}) policy.Touch({"j", id});
  EXPECT_THAT(Ids(policy.Rank(Clean("j", {1, 2, 3}))), ElementsAre(3, 1, 2));
  policy.Touch({"j", 3});
  EXPECT_THAT(Ids(policy.Rank(Clean("j", {1, 2, 3}))), ElementsAre(1, 2, 3));
}

TEST(EvictionPolicyTest, NeverUsedObjectsComeFirstThenIdOrder) {
  EvictionPolicy policy;
  policy.Touch({"j", 1});
  // 5 and 4 were never touched: use time 0, ties broken by id.
  EXPECT_THAT(Ids(policy.Rank(Clean("j", {1, 5, 4}))), ElementsAre(4, 5, 1));
}

TEST(EvictionPolicyTest, CleanBeforeDirty) {
  EvictionPolicy policy;
  policy.SetAccessOrder("j", {1, 2});
  std::vector<EvictionCandidate> c = {{{"j", 9}, 1, true}, {{"j", 2}, 1, false}};
  // 9 is never used again, but it is dirty; 2 is clean.
  EXPECT_THAT(Ids(policy.Rank(c)), ElementsAre(2, 9));
}

TEST(EvictionPolicyTest, FurthestNextUseAndUnlistedFirst) {
  EvictionPolicy policy;
  policy.SetAccessOrder("j", {1, 2, 3, 4});
  EXPECT_EQ(policy.NextUseDistance({"j", 3}), 2u);
  EXPECT_EQ(policy.NextUseDistance({"j", 7}), EvictionPolicy::kNoNextUse);
  EXPECT_THAT(Ids(policy.Rank(Clean("j", {1, 2, 3, 4, 7}))), ElementsAre(7, 4, 3, 2, 1));
}

TEST(EvictionPolicyTest, CursorMovesOnlyOnTheObjectAtIt) {
  EvictionPolicy policy;
  policy.SetAccessOrder("j", {1, 2, 1, 3});
  policy.Touch({"j", 2});  // not at the cursor
  EXPECT_EQ(policy.Cursor("j"), 0u);
  policy.Touch({"j", 1});
  EXPECT_EQ(policy.Cursor("j"), 1u);
  EXPECT_EQ(policy.NextUseDistance({"j", 1}), 1u);  // its second use, position 2
  policy.Touch({"j", 2});
  policy.Touch({"j", 1});
  EXPECT_EQ(policy.Cursor("j"), 3u);
  EXPECT_EQ(policy.NextUseDistance({"j", 1}), EvictionPolicy::kNoNextUse);
  EXPECT_EQ(policy.NextUseDistance({"j", 3}), 0u);
  policy.Touch({"j", 3});
  EXPECT_EQ(policy.Cursor("j"), 4u);
  policy.Touch({"j", 3});  // past the end: stays
  EXPECT_EQ(policy.Cursor("j"), 4u);
}

TEST(EvictionPolicyTest, OrderAfterTheStepFallsBackToLruAmongUnused) {
  EvictionPolicy policy;
  policy.SetAccessOrder("j", {1, 2});
  policy.Touch({"j", 1});
  policy.Touch({"j", 2});
  // Nothing is used again: least recently used first.
  EXPECT_THAT(Ids(policy.Rank(Clean("j", {2, 1}))), ElementsAre(1, 2));
}

TEST(EvictionPolicyTest, NewOrderReplacesOldAndResetsCursor) {
  EvictionPolicy policy;
  policy.SetAccessOrder("j", {1, 2, 3});
  policy.Touch({"j", 1});
  policy.SetAccessOrder("j", {3, 2, 1});
  EXPECT_EQ(policy.Cursor("j"), 0u);
  EXPECT_THAT(Ids(policy.Rank(Clean("j", {1, 2, 3}))), ElementsAre(1, 2, 3));
  policy.SetAccessOrder("j", {});
  EXPECT_FALSE(policy.HasOrder("j"));
}

TEST(EvictionPolicyTest, AcrossJobsUnusedThenLruThenFurthest) {
  EvictionPolicy policy;
  policy.SetAccessOrder("a", {1, 2});
  policy.Touch({"b", 7});
  std::vector<EvictionCandidate> c = {
      {{"a", 1}, 1, false}, {{"a", 2}, 1, false}, {{"a", 9}, 1, false}, {{"b", 7}, 1, false}};
  // a/9: not in a's order; b/7: LRU job; a/2 further than a/1.
  EXPECT_THAT(Ids(policy.Rank(c)), ElementsAre(9, 7, 2, 1));
}

TEST(EvictionPolicyTest, TiesBrokenByJobThenId) {
  EvictionPolicy policy;
  std::vector<EvictionCandidate> c = {
      {{"b", 1}, 1, false}, {{"a", 2}, 1, false}, {{"a", 1}, 1, false}};
  std::vector<EvictionCandidate> ranked = policy.Rank(c);
  EXPECT_EQ(ranked[0].key, (ObjectKey{"a", 1}));
  EXPECT_EQ(ranked[1].key, (ObjectKey{"a", 2}));
  EXPECT_EQ(ranked[2].key, (ObjectKey{"b", 1}));
}

TEST(EvictionPolicyTest, ChooseVictimsCoversTheNeedOrNothing) {
  EvictionPolicy policy;
  for (uint64_t id : {1, 2, 3}) policy.Touch({"j", id});
  auto c = Clean("j", {1, 2, 3}, 10);
  EXPECT_THAT(policy.ChooseVictims(c, 15),
              ElementsAre(ObjectKey{"j", 1}, ObjectKey{"j", 2}));
  EXPECT_THAT(policy.ChooseVictims(c, 31), IsEmpty());
  EXPECT_THAT(policy.ChooseVictims(c, 0), IsEmpty());
  EXPECT_THAT(policy.ChooseVictims({}, 1), IsEmpty());
}

TEST(EvictionPolicyTest, ForgetJobDropsOrderAndUseTimes) {
  EvictionPolicy policy;
  policy.SetAccessOrder("j", {1});
  policy.Touch({"j", 2});
  policy.Touch({"k", 1});
  policy.ForgetJob("j");
  EXPECT_FALSE(policy.HasOrder("j"));
  // j/2 now has no use time, so it ranks before k/1 again.
  std::vector<EvictionCandidate> c = {{{"k", 1}, 1, false}, {{"j", 2}, 1, false}};
  EXPECT_EQ(policy.Rank(c)[0].key, (ObjectKey{"j", 2}));
}

}  // namespace
}  // namespace spill::storage
