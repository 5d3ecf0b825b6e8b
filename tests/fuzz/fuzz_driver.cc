// Runs a LLVMFuzzerTestOneInput target without libFuzzer (GCC builds, CI):
// a fixed number of inputs from a seeded generator that mixes random bytes
// with mutations of the seed inputs given on the command line. With clang,
// configure -DSPILL_LIBFUZZER=ON to get real coverage-guided fuzzers instead.
//
//   config_fuzz_smoke [--runs=N] [--seed=S] [SEED_FILE...]
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

int main(int argc, char** argv) {
  uint64_t runs = 20000, seed = 1;
  std::vector<std::string> corpus = {"", "{}", "0", "1GiB", "30s"};
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a.rfind("--runs=", 0) == 0) runs = std::stoull(a.substr(7));
    else if (a.rfind("--seed=", 0) == 0) seed = std::stoull(a.substr(7));
    else {
      std::ifstream in(a, std::ios::binary);
      std::stringstream ss;
      ss << in.rdbuf();
      corpus.push_back(ss.str());
    }
  }
  std::mt19937_64 rng(seed);
  for (uint64_t r = 0; r < runs; ++r) {
    std::string input = corpus[rng() % corpus.size()];
    const int edits = 1 + static_cast<int>(rng() % 8);
    for (int e = 0; e < edits; ++e) {
      const size_t pos = input.empty() ? 0 : rng() % (input.size() + 1);
      switch (rng() % 4) {
        case 0: input.insert(pos, 1, static_cast<char>(rng())); break;
        case 1: if (pos < input.size()) input.erase(pos, 1 + rng() % 4); break;
        case 2: if (pos < input.size()) input[pos] = static_cast<char>(rng()); break;
        default: {
          const std::string& other = corpus[rng() % corpus.size()];
          input.insert(pos, other.substr(0, rng() % (other.size() + 1)));
        }
      }
    }
    LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(input.data()), input.size());
  }
  std::printf("%llu inputs, no failure\n", static_cast<unsigned long long>(runs));
  return 0;
}
