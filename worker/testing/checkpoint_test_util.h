// Test helpers for checkpoint tests: a small model of odd-sized layers,
// distinct known values per (layer, state, element), and a fixture that saves
// them from any world size into a temp directory.
#ifndef SPILL_WORKER_TESTING_CHECKPOINT_TEST_UTIL_H_
#define SPILL_WORKER_TESTING_CHECKPOINT_TEST_UTIL_H_

#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "worker/checkpoint.h"

// EXPECT that status `s` has `text` in its message.
#define EXPECT_HAS(s, text) \
  EXPECT_NE(std::string((s).message()).find(text), std::string::npos) << (s)

namespace spill::worker::testing_util {

namespace fs = std::filesystem;

inline const std::vector<std::string> kStates = {"master", "exp_avg", "exp_avg_sq"};

inline std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// A model of odd-sized layers; layer "tiny" has fewer elements than ranks.
inline CkptMeta TestMeta(int world, int64_t step) {
  CkptMeta meta;
  meta.world_size = world;
  meta.step = step;
  meta.states = kStates;
  meta.layers = {
      {"embedding", 37, {{"wte", {5, 7}, 0}, {"wpe", {2}, 35}}},
      {"block.0", 101, {{"block.0.w", {10, 10}, 0}, {"block.0.b", {1}, 100}}},
      {"tiny", 1, {{"tiny.g", {}, 0}}},
      {"empty", 0, {}},
  };
  meta.engine_state_json = R"({"scaler":{"scale":65536},"trace":[0,1,2]})";
  return meta;
}

// The unsharded value of element i of (layer, state): distinct everywhere.
inline float Value(size_t layer, size_t state, int64_t i, int64_t step) {
  return static_cast<float>(layer * 100000 + state * 10000 + i) * 0.25f + static_cast<float>(step);
}

inline std::vector<float> Full(const CkptMeta& meta, size_t layer, size_t state) {
  std::vector<float> v(static_cast<size_t>(meta.layers[layer].numel));
  for (size_t i = 0; i < v.size(); ++i)
    v[i] = Value(layer, state, static_cast<int64_t>(i), meta.step);
  return v;
}

// Rank r's shard of a full vector; the padding holds garbage on purpose (a
// reader must drop it, not pass it on).
inline std::vector<float> Shard(const std::vector<float>& full, int rank, int world) {
  const int64_t shard = ShardElements(static_cast<int64_t>(full.size()), world);
  std::vector<float> out(static_cast<size_t>(shard), -777.0f);
  for (int64_t k = 0; k < shard; ++k) {
    const int64_t i = rank * shard + k;
    if (i < static_cast<int64_t>(full.size()))
      out[static_cast<size_t>(k)] = full[static_cast<size_t>(i)];
  }
  return out;
}

// Rank r's shard of `full` for `world` ranks as a reader returns it (zero
// padding).
inline std::vector<float> Resplit(const std::vector<float>& full, int rank, int world) {
  std::vector<float> out = Shard(full, rank, world);
  const int64_t shard = static_cast<int64_t>(out.size());
  for (int64_t k = 0; k < shard; ++k) {
    if (rank * shard + k >= static_cast<int64_t>(full.size())) out[static_cast<size_t>(k)] = 0.0f;
  }
  return out;
}

class CheckpointTest : public ::testing::Test {
 protected:
  CheckpointTest() {
    std::string tmpl = ::testing::TempDir() + "/spill-ckpt-XXXXXX";
    if (::mkdtemp(tmpl.data()) != nullptr) root_ = tmpl;
    dir_ = root_ + "/ckpt";
  }
  ~CheckpointTest() override { fs::remove_all(root_); }

  absl::Status WriteRank(const std::string& tag, const CkptMeta& meta, int rank) {
    std::vector<std::vector<float>> storage;
    for (size_t l = 0; l < meta.layers.size(); ++l) {
      for (size_t s = 0; s < meta.states.size(); ++s) {
        storage.push_back(Shard(Full(meta, l, s), rank, meta.world_size));
      }
    }
    std::vector<CkptArray> arrays;
    size_t k = 0;
    for (size_t l = 0; l < meta.layers.size(); ++l) {
      for (size_t s = 0; s < meta.states.size(); ++s) {
        arrays.push_back({meta.layers[l].name, meta.states[s], storage[k++]});
      }
    }
    return WriteRankShard(dir_, tag, rank, meta, arrays);
  }

  // Every rank writes, then rank 0 publishes.
  void Save(const std::string& tag, const CkptMeta& meta) {
    for (int r = 0; r < meta.world_size; ++r) ASSERT_TRUE(WriteRank(tag, meta, r).ok());
    const absl::Status s = PublishCheckpoint(dir_, tag, meta);
    ASSERT_TRUE(s.ok()) << s;
  }

  void ExpectResharded(const CkptMeta& meta, int new_world) {
    auto reader = CheckpointReader::Open(dir_, "");
    ASSERT_TRUE(reader.ok()) << reader.status();
    for (size_t l = 0; l < meta.layers.size(); ++l) {
      for (size_t s = 0; s < meta.states.size(); ++s) {
        const std::vector<float> full = Full(meta, l, s);
        for (int r = 0; r < new_world; ++r) {
          auto got = reader->ReadShard(meta.layers[l].name, meta.states[s], r, new_world);
          ASSERT_TRUE(got.ok()) << got.status();
          const std::vector<float> want = Resplit(full, r, new_world);
          ASSERT_EQ(got->size(), want.size());
          for (size_t k = 0; k < want.size(); ++k) {
            ASSERT_EQ((*got)[k], want[k])
                << meta.layers[l].name << "/" << meta.states[s] << " rank " << r << " of "
                << new_world << " element " << k;
          }
        }
      }
    }
  }

  std::string TagFile(const std::string& tag, const std::string& name) const {
    return absl::StrCat(dir_, "/", tag, "/", name);
  }
  std::string Latest() const { return ReadAll(dir_ + "/latest"); }

  std::string root_, dir_;
};

}  // namespace spill::worker::testing_util

#endif  // SPILL_WORKER_TESTING_CHECKPOINT_TEST_UTIL_H_
