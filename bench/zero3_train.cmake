# The zero3_train benchmark: ZeRO-3 training throughput against the lane
# bound. Included from worker/CMakeLists.txt once LibTorch is found (Torch's
# imported targets are visible only there); built with the benchmarks, the
# engine and the spilld fixture (which needs the tests).
set(spill_bench_dir ${PROJECT_SOURCE_DIR}/bench)
if(SPILL_BUILD_BENCH AND TARGET spill_worker_engine AND TARGET spill_worker_spilld_fixture)
  add_executable(zero3_train ${spill_bench_dir}/zero3_train.cc ${spill_bench_dir}/zero3_flags.cc
                 ${spill_bench_dir}/zero3_lanes.cc ${spill_bench_dir}/zero3_profile.cc
                 ${spill_bench_dir}/zero3_sizing.cc)
  set_target_properties(zero3_train PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR}/bench)
  spill_link_torch_first(zero3_train)
  target_link_libraries(zero3_train PRIVATE spill_worker_engine spill_worker_spilld_fixture
                        spill::optim nlohmann_json::nlohmann_json absl::strings absl::str_format
                        PkgConfig::LIBURING)
  target_include_directories(zero3_train PRIVATE ${PROJECT_SOURCE_DIR})
  target_compile_options(zero3_train PRIVATE -Wno-unused-parameter -Wno-missing-field-initializers)
  if(spill_have_nccl)
    target_compile_definitions(zero3_train PRIVATE SPILL_ZERO3_CUDA=1)
    target_link_libraries(zero3_train PRIVATE CUDA::cudart)
  else()
    target_compile_definitions(zero3_train PRIVATE SPILL_ZERO3_CUDA=0)
  endif()
  add_dependencies(zero3_train spilld)
  if(SPILL_BUILD_TESTS)
    add_executable(zero3_lanes_test ${spill_bench_dir}/zero3_lanes_test.cc ${spill_bench_dir}/zero3_lanes.cc
                   ${spill_bench_dir}/zero3_sizing_test.cc ${spill_bench_dir}/zero3_sizing.cc)
    set_target_properties(zero3_lanes_test PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR}/bench)
    spill_link_torch_first(zero3_lanes_test)
    target_link_libraries(zero3_lanes_test PRIVATE spill_worker_torch spill::optim GTest::gtest_main
                          PkgConfig::LIBURING)
    target_include_directories(zero3_lanes_test PRIVATE ${PROJECT_SOURCE_DIR})
    target_compile_definitions(zero3_lanes_test PRIVATE SPILL_ZERO3_CUDA=0)
    gtest_discover_tests(zero3_lanes_test PROPERTIES LABELS unit TIMEOUT 120 DISCOVERY_TIMEOUT 60)

    # A tiny GPT on the CPU with Gloo and a real spilld: the output must be
    # valid JSON lines with every metric (performance is not asserted).
    add_test(NAME zero3_train_cpu_json COMMAND sh -c
      "\"$0\" --device=cpu --layers=2 --hidden=64 --heads=4 --vocab=256 --seq=32 --steps=2 --warmup=1 --micro-batch=2 --optim-threads=2 >\"$1\" && \"$3\" \"$2\" \"$1\""
      $<TARGET_FILE:zero3_train> ${PROJECT_BINARY_DIR}/bench/zero3_train_cpu.jsonl
      ${spill_bench_dir}/check_zero3_json.py ${SPILL_PYTHON3})
    set_tests_properties(zero3_train_cpu_json PROPERTIES LABELS slow TIMEOUT 600)
    # Parameters and optimizer states on spilld's NVMe tier (a directory of
    # the build tree; it needs O_DIRECT): the NVMe lane counts spilld's bytes.
    add_test(NAME zero3_train_cpu_nvme_json COMMAND sh -c
      "rm -rf \"$4\" && mkdir -p \"$4\" && \"$0\" --device=cpu --layers=2 --hidden=64 --heads=4 --vocab=256 --seq=32 --steps=3 --warmup=1 --micro-batch=2 --optim-threads=2 --clip=0 --offload-param=nvme --offload-optimizer=nvme --max-in-cpu=1000 --nvme-dir=\"$4\" >\"$1\" && \"$3\" \"$2\" \"$1\" --nvme; rc=$?; rm -rf \"$4\"; exit $rc"
      $<TARGET_FILE:zero3_train> ${PROJECT_BINARY_DIR}/bench/zero3_train_cpu_nvme.jsonl
      ${spill_bench_dir}/check_zero3_json.py ${SPILL_PYTHON3} ${PROJECT_BINARY_DIR}/bench/zero3_nvme)
    set_tests_properties(zero3_train_cpu_nvme_json PROPERTIES LABELS slow TIMEOUT 600)
    # --profile: a timeline of the last 2 steps that bench/zero3_timeline.py
    # reads (LibTorch's profiler and the engine's optimizer step spans).
    add_test(NAME zero3_train_cpu_profile COMMAND sh -c
      "\"$0\" --device=cpu --layers=2 --hidden=64 --heads=4 --vocab=256 --seq=32 --steps=3 --warmup=1 --clip=0 --optim-threads=2 --profile=\"$1\" >/dev/null && \"$3\" \"$2\" \"$1\" 2"
      $<TARGET_FILE:zero3_train> ${PROJECT_BINARY_DIR}/bench/zero3_profile_cpu
      ${spill_bench_dir}/check_zero3_timeline.py ${SPILL_PYTHON3})
    set_tests_properties(zero3_train_cpu_profile PROPERTIES LABELS slow TIMEOUT 600
      PASS_REGULAR_EXPRESSION "timeline OK: 2 steps")
    # The DeepSpeed baseline's model and loop (bench/zero3_deepspeed.py) with
    # torch on the CPU: the same parameter count as the C++ model per preset.
    add_test(NAME zero3_deepspeed_py COMMAND ${SPILL_PYTHON} ${spill_bench_dir}/zero3_deepspeed_test.py
             $<TARGET_FILE:spill-estimate>)
    set_tests_properties(zero3_deepspeed_py PROPERTIES LABELS unit TIMEOUT 300)
    # The largest-trainable driver on the CPU: zero3_train against that torch loop.
    add_test(NAME largest_trainable_py COMMAND ${SPILL_PYTHON} ${spill_bench_dir}/largest_trainable_test.py
             $<TARGET_FILE:zero3_train>)
    set_tests_properties(largest_trainable_py PROPERTIES LABELS integration TIMEOUT 600
                         ENVIRONMENT SPILL_BENCH_MACHINE=ctest)
    add_test(NAME zero3_train_bad_acquire_ahead COMMAND sh -c
      "\"$0\" --acquire-ahead=-1 2>&1; echo \"exit=$?\"" $<TARGET_FILE:zero3_train>)
    set_tests_properties(zero3_train_bad_acquire_ahead PROPERTIES LABELS unit
      PASS_REGULAR_EXPRESSION "bad value for --acquire-ahead: '-1'.*exit=2")
    # Bad input: exit 2 naming the flag; a model larger than the host: exit 3
    # with a does_not_fit line (checked before anything is allocated).
    add_test(NAME zero3_train_bad_flag COMMAND sh -c "\"$0\" --steps=0 2>&1; echo \"exit=$?\""
      $<TARGET_FILE:zero3_train>)
    set_tests_properties(zero3_train_bad_flag PROPERTIES LABELS unit
      PASS_REGULAR_EXPRESSION "bad value for --steps: '0'.*exit=2")
    add_test(NAME zero3_train_nvme_needs_dir COMMAND sh -c
      "\"$0\" --offload-optimizer=nvme 2>&1; echo \"exit=$?\"" $<TARGET_FILE:zero3_train>)
    set_tests_properties(zero3_train_nvme_needs_dir PROPERTIES LABELS unit
      PASS_REGULAR_EXPRESSION "needs --nvme-dir=DIR.*exit=2")
    add_test(NAME zero3_train_does_not_fit COMMAND sh -c
      "\"$0\" --device=cpu --preset=13B --layers=400 2>/dev/null; echo \"exit=$?\""
      $<TARGET_FILE:zero3_train>)
    set_tests_properties(zero3_train_does_not_fit PROPERTIES LABELS unit
      PASS_REGULAR_EXPRESSION "\"metric\":\"does_not_fit\".*spilld needs .* GiB pinned.*exit=3")
  endif()
endif()
