// ConsolidateCheckpoint, WriteConsolidatedWeights and spill-consolidate.
#include <stdio.h>
#include <sys/wait.h>

#include <cstdint>
#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "worker/checkpoint.h"
#include "worker/safetensors.h"
#include "worker/testing/checkpoint_test_util.h"

namespace spill::worker {
namespace {

namespace fs = std::filesystem;
using testing_util::CheckpointTest;
using testing_util::Full;
using testing_util::ReadAll;
using testing_util::TestMeta;

struct CommandResult {
  int exit_code = -1;
  std::string output;
};

CommandResult RunCommand(const std::string& command) {
  CommandResult run;
  FILE* p = ::popen((command + " 2>&1").c_str(), "r");
  if (p == nullptr) return run;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) run.output.append(buf, n);
  const int status = ::pclose(p);
  run.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return run;
}

float Decode(const SafetensorsFile& f, const StTensorInfo& t, int64_t i) {
  if (t.dtype == StDType::kF32) {
    float v = 0;
    EXPECT_TRUE(f.ReadBytes(t, static_cast<uint64_t>(i) * 4, &v, 4).ok());
    return v;
  }
  uint16_t h = 0;
  EXPECT_TRUE(f.ReadBytes(t, static_cast<uint64_t>(i) * 2, &h, 2).ok());
  return t.dtype == StDType::kBF16 ? Bf16ToFp32(h) : Fp16ToFp32(h);
}

float Convert(float v, CkptDType dtype) {
  switch (dtype) {
    case CkptDType::kBf16:
      return Bf16ToFp32(Fp32ToBf16(v));
    case CkptDType::kFp16:
      return Fp16ToFp32(Fp32ToFp16(v));
    case CkptDType::kFp32:
      break;
  }
  return v;
}

// Every parameter of `meta` in `path` holds the master values in `dtype`.
void ExpectConsolidated(const std::string& path, const CkptMeta& meta, CkptDType dtype) {
  auto f = SafetensorsFile::Open(path);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->metadata().at("format"), "pt");
  const StDType want_dtype = dtype == CkptDType::kFp32   ? StDType::kF32
                             : dtype == CkptDType::kBf16 ? StDType::kBF16
                                                         : StDType::kF16;
  size_t count = 0;
  for (size_t l = 0; l < meta.layers.size(); ++l) {
    const std::vector<float> full = Full(meta, l, 0);
    for (const CkptParam& p : meta.layers[l].params) {
      const StTensorInfo* t = f->Find(p.name);
      ASSERT_NE(t, nullptr) << p.name;
      EXPECT_EQ(t->shape, p.shape) << p.name;
      EXPECT_EQ(t->dtype, want_dtype) << p.name;
      for (int64_t i = 0; i < t->numel(); ++i) {
        ASSERT_EQ(Decode(*f, *t, i), Convert(full[static_cast<size_t>(p.offset + i)], dtype))
            << p.name << " element " << i;
      }
      ++count;
    }
  }
  EXPECT_EQ(f->tensors().size(), count);
}

TEST_F(CheckpointTest, ConsolidatesEveryDtype) {
  CkptMeta meta = TestMeta(3, 7);
  Save("t", meta);
  for (CkptDType dtype : {CkptDType::kFp32, CkptDType::kBf16, CkptDType::kFp16}) {
    const std::string out = root_ + "/out.safetensors";
    ASSERT_TRUE(ConsolidateCheckpoint(dir_, "", out, dtype).ok());
    ExpectConsolidated(out, meta, dtype);
    auto f = SafetensorsFile::Open(out);
    ASSERT_TRUE(f.ok());
    EXPECT_EQ(f->metadata().at("step"), "7");
    EXPECT_EQ(f->metadata().at("tag"), "t");
  }
}

// The same model saved from 1 and from 4 ranks consolidates to the same bytes.
TEST_F(CheckpointTest, ConsolidationIsIndependentOfWorldSize) {
  const std::string base = dir_;
  dir_ = base + "/one";
  Save("t", TestMeta(1, 3));
  ASSERT_TRUE(ConsolidateCheckpoint(dir_, "t", root_ + "/one.safetensors", CkptDType::kFp32).ok());
  dir_ = base + "/four";
  Save("t", TestMeta(4, 3));
  ASSERT_TRUE(ConsolidateCheckpoint(dir_, "t", root_ + "/four.safetensors", CkptDType::kFp32).ok());
  EXPECT_EQ(ReadAll(root_ + "/one.safetensors"), ReadAll(root_ + "/four.safetensors"));
}

TEST_F(CheckpointTest, ConsolidateWithoutMasterLeavesOutputAlone) {
  CkptMeta meta = TestMeta(2, 1);
  meta.states = {"exp_avg"};
  Save("t", meta);
  const std::string out = root_ + "/keep.safetensors";
  { std::ofstream(out) << "previous"; }
  const absl::Status s = ConsolidateCheckpoint(dir_, "t", out, CkptDType::kBf16);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_HAS(s, "no \"master\" state");
  EXPECT_EQ(ReadAll(out), "previous");
}

TEST_F(CheckpointTest, WritesGatheredWeights) {
  const CkptMeta meta = TestMeta(1, 0);
  std::vector<std::vector<float>> full;
  std::vector<absl::Span<const float>> spans;
  for (size_t l = 0; l < meta.layers.size(); ++l) {
    full.push_back(Full(meta, l, 0));
    full.back().resize(full.back().size() + 3, -1.0f);  // gathered padding
  }
  for (const auto& f : full) spans.emplace_back(f);
  const std::string out = root_ + "/w16.safetensors";
  ASSERT_TRUE(WriteConsolidatedWeights(out, meta.layers, spans, CkptDType::kBf16).ok());
  ExpectConsolidated(out, meta, CkptDType::kBf16);

  const std::string bad = root_ + "/bad.safetensors";
  std::vector<absl::Span<const float>> fewer(spans.begin(), spans.end() - 1);
  absl::Status s = WriteConsolidatedWeights(bad, meta.layers, fewer, CkptDType::kFp16);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_HAS(s, "3 layer arrays for 4 layers");
  std::vector<absl::Span<const float>> short_layer = spans;
  short_layer[1] = short_layer[1].subspan(0, 100);
  s = WriteConsolidatedWeights(bad, meta.layers, short_layer, CkptDType::kFp16);
  EXPECT_HAS(s, "layer 'block.0' has 100 elements, needs 101");
  EXPECT_FALSE(fs::exists(bad));
}

TEST_F(CheckpointTest, CliConsolidates) {
  CkptMeta meta = TestMeta(2, 11);
  Save("step11", meta);
  const std::string out = root_ + "/cli.safetensors";
  CommandResult run = RunCommand(absl::StrCat(SPILL_CONSOLIDATE_BIN, " --checkpoint=", dir_,
                                              " --output=", out, " --dtype=fp16"));
  EXPECT_EQ(run.exit_code, 0) << run.output;
  EXPECT_NE(run.output.find("wrote 5 tensors (139 parameters, fp16) of step 11 (world size 2)"),
            std::string::npos)
      << run.output;
  ExpectConsolidated(out, meta, CkptDType::kFp16);

  run = RunCommand(absl::StrCat(SPILL_CONSOLIDATE_BIN, " --checkpoint=", dir_, " --output=", out,
                                " --frobnicate=1"));
  EXPECT_EQ(run.exit_code, 2) << run.output;
  EXPECT_NE(run.output.find("unknown flag --frobnicate"), std::string::npos) << run.output;
  run = RunCommand(absl::StrCat(SPILL_CONSOLIDATE_BIN, " --checkpoint=", dir_));
  EXPECT_EQ(run.exit_code, 2) << run.output;
  EXPECT_NE(run.output.find("--output=FILE is required"), std::string::npos) << run.output;
  run = RunCommand(absl::StrCat(SPILL_CONSOLIDATE_BIN, " --checkpoint=", dir_, " --tag=nope",
                                " --output=", root_, "/x.safetensors"));
  EXPECT_EQ(run.exit_code, 1) << run.output;
  EXPECT_NE(run.output.find("checkpoint " + dir_ + "/nope does not exist"), std::string::npos)
      << run.output;
  EXPECT_FALSE(fs::exists(root_ + "/x.safetensors"));
}

// The reference safetensors library reads what we write (only where it is
// installed; CI does not install it).
TEST_F(CheckpointTest, ReferenceLibraryReadsConsolidatedFiles) {
  if (RunCommand("python3 -c 'import safetensors.numpy'").exit_code != 0) {
    GTEST_SKIP() << "python3 with safetensors and numpy is not available: "
                    "pip install safetensors numpy to run this check";
  }
  CkptMeta meta = TestMeta(3, 2);
  Save("t", meta);
  nlohmann::json expected = nlohmann::json::object();
  for (size_t l = 0; l < meta.layers.size(); ++l) {
    const std::vector<float> full = Full(meta, l, 0);
    for (const CkptParam& p : meta.layers[l].params) {
      int64_t n = 1;
      for (int64_t d : p.shape) n *= d;
      expected[p.name] = {
          {"shape", p.shape},
          {"values", std::vector<float>(full.begin() + p.offset, full.begin() + p.offset + n)}};
    }
  }
  { std::ofstream(root_ + "/expected.json") << expected.dump(); }
  for (const auto& [name, dtype] :
       {std::pair{"fp32", CkptDType::kFp32}, {"fp16", CkptDType::kFp16}}) {
    const std::string out = absl::StrCat(root_, "/", name, ".safetensors");
    ASSERT_TRUE(ConsolidateCheckpoint(dir_, "t", out, dtype).ok());
    const CommandResult run = RunCommand(absl::StrCat("python3 ", SPILL_CHECK_SAFETENSORS_PY, " ",
                                                      out, " ", root_, "/expected.json ", name));
    EXPECT_EQ(run.exit_code, 0) << run.output;
  }
  // The check can fail: the fp32 file is not fp16.
  const CommandResult wrong =
      RunCommand(absl::StrCat("python3 ", SPILL_CHECK_SAFETENSORS_PY, " ", root_,
                              "/fp32.safetensors ", root_, "/expected.json fp16"));
  EXPECT_NE(wrong.exit_code, 0) << wrong.output;
  // And our reader reads what the reference library writes.
  const std::string theirs = root_ + "/theirs.safetensors";
  const CommandResult save =
      RunCommand(absl::StrCat("python3 -c \"import sys, numpy as np; from safetensors.numpy import "
                              "save_file; "
                              "save_file({'a': np.arange(6, dtype=np.float32).reshape(2, 3), "
                              "'b': np.array([1.5, -2], dtype=np.float16)}, sys.argv[1], "
                              "metadata={'k': 'v'})\" ",
                              theirs));
  ASSERT_EQ(save.exit_code, 0) << save.output;
  auto f = SafetensorsFile::Open(theirs);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->metadata().at("k"), "v");
  ASSERT_NE(f->Find("a"), nullptr);
  EXPECT_EQ(f->Find("a")->shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(Decode(*f, *f->Find("a"), 5), 5.0f);
  ASSERT_NE(f->Find("b"), nullptr);
  EXPECT_EQ(Decode(*f, *f->Find("b"), 1), -2.0f);
}

}  // namespace
}  // namespace spill::worker
