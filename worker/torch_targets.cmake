# Worker targets that need LibTorch (included from worker/CMakeLists.txt once
# Torch is found). Torch is linked PRIVATE: its include directory (with its
# own protobuf headers) never reaches targets that compile generated code.

# gloo's headers: the torch wheel has c10d's ProcessGroupGloo.hpp but not the
# gloo headers it includes; Debian's libgloo-dev provides them (headers only;
# the gloo code itself is inside libtorch_cpu).
find_path(SPILL_GLOO_INCLUDE_DIR gloo/rendezvous/store.h)
if(NOT SPILL_GLOO_INCLUDE_DIR)
  message(STATUS "spill: gloo headers (Debian libgloo-dev) not found: the worker's torch parts are skipped")
  return()
endif()

set(spill_worker_torch_sources collectives.cc collectives_gloo.cc gpt.cc)
set(spill_have_nccl OFF)
if(SPILL_HAVE_CUDA)
  # Prefer the NCCL that ships with the torch wheel (nvidia/nccl), which
  # libtorch_cuda loads anyway: one libnccl.so.2 per process, one version.
  set(spill_wheel_nccl ${spill_torch_lib_dir}/../../nvidia/nccl)
  find_path(SPILL_NCCL_INCLUDE_DIR nccl.h
            HINTS ${spill_wheel_nccl}/include ${CUDAToolkit_INCLUDE_DIRS})
  find_library(SPILL_NCCL_LIBRARY NAMES libnccl.so.2 nccl NAMES_PER_DIR
               HINTS ${spill_wheel_nccl}/lib ${CUDAToolkit_LIBRARY_DIR})
  if(SPILL_NCCL_INCLUDE_DIR AND SPILL_NCCL_LIBRARY)
    set(spill_have_nccl ON)
  endif()
endif()
if(spill_have_nccl)
  list(APPEND spill_worker_torch_sources collectives_nccl.cc)
  message(STATUS "spill: worker NCCL collectives with ${SPILL_NCCL_LIBRARY}")
else()
  list(APPEND spill_worker_torch_sources collectives_nccl_none.cc)
  message(STATUS "spill: NCCL not found; the worker is built with Gloo collectives only")
endif()

# libtorch.so exports its own (statically linked, older) std::filesystem
# symbols; when libtorch.so precedes libstdc++ in DT_NEEDED they interpose on
# libstdc++'s and std::filesystem::remove_all jumps to a null pointer. Every
# executable linking LibTorch puts libstdc++ first.
function(spill_link_torch_first target)
  # One item: CMake de-duplicates repeated flags, which would unbalance a
  # separate push-state/pop-state pair.
  target_link_libraries(${target} PRIVATE "-Wl,--push-state,--no-as-needed,-lstdc++,--pop-state")
endfunction()

add_library(spill_worker_torch STATIC ${spill_worker_torch_sources})
target_link_libraries(spill_worker_torch
  PUBLIC spill::worker_config ${TORCH_LIBRARIES}
  PRIVATE absl::strings)
target_include_directories(spill_worker_torch SYSTEM PRIVATE ${SPILL_GLOO_INCLUDE_DIR})
target_compile_definitions(spill_worker_torch PRIVATE USE_C10D_GLOO)
if(spill_have_nccl)
  target_include_directories(spill_worker_torch SYSTEM PRIVATE ${SPILL_NCCL_INCLUDE_DIR})
  target_link_libraries(spill_worker_torch PRIVATE ${SPILL_NCCL_LIBRARY} CUDA::cudart)
endif()
# LibTorch's headers trip -Wextra in places; they are third-party.
target_compile_options(spill_worker_torch PRIVATE -Wno-unused-parameter -Wno-missing-field-initializers)

if(SPILL_BUILD_TESTS)
  add_executable(worker_gpt_test gpt_test.cc)
  spill_link_torch_first(worker_gpt_test)
  target_link_libraries(worker_gpt_test PRIVATE spill_worker_torch GTest::gtest_main)
  gtest_discover_tests(worker_gpt_test TEST_FILTER "-Gpu*"
                       PROPERTIES LABELS unit TIMEOUT 300 DISCOVERY_TIMEOUT 60)
  gtest_discover_tests(worker_gpt_test TEST_FILTER "Gpu*"
                       PROPERTIES LABELS gpu TIMEOUT 300 DISCOVERY_TIMEOUT 60)

  add_executable(worker_collectives_test collectives_test.cc)
  spill_link_torch_first(worker_collectives_test)
  target_link_libraries(worker_collectives_test PRIVATE spill_worker_torch GTest::gtest)
  gtest_discover_tests(worker_collectives_test PROPERTIES LABELS integration TIMEOUT 180
                       DISCOVERY_TIMEOUT 60)

  if(spill_have_nccl)
    add_executable(worker_nccl_test collectives_nccl_test.cc)
    spill_link_torch_first(worker_nccl_test)
    target_link_libraries(worker_nccl_test PRIVATE spill_worker_torch CUDA::cudart GTest::gtest)
    gtest_discover_tests(worker_nccl_test PROPERTIES LABELS gpu TIMEOUT 300 DISCOVERY_TIMEOUT 60)
  endif()

  # A spilld for worker tests behind a protobuf-free header.
  add_library(spill_worker_spilld_fixture STATIC testing/spilld_fixture.cc)
  target_link_libraries(spill_worker_spilld_fixture PRIVATE spill_test_harness PkgConfig::HTTPLIB)
  target_link_libraries(spill_worker_spilld_fixture PUBLIC absl::statusor spill::common)

  add_executable(worker_torch_spilld_test torch_spilld_test.cc)
  spill_link_torch_first(worker_torch_spilld_test)
  target_link_libraries(worker_torch_spilld_test PRIVATE
    spill_worker_spilld_fixture spill::client ${TORCH_LIBRARIES} GTest::gtest_main)
  gtest_discover_tests(worker_torch_spilld_test PROPERTIES LABELS integration TIMEOUT 120
                       DISCOVERY_TIMEOUT 60)
endif()
