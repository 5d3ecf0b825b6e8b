# Every dependency comes from Debian packages; nothing is vendored or downloaded.
find_package(Threads REQUIRED)
find_package(absl CONFIG REQUIRED)
# Debian bookworm ships no protobuf CMake config: module mode.
find_package(Protobuf REQUIRED)
# Needs protobuf-compiler-grpc for the plugin target.
find_package(gRPC CONFIG REQUIRED)
find_package(nlohmann_json CONFIG REQUIRED)
find_package(PkgConfig REQUIRED)
pkg_check_modules(LIBURING REQUIRED IMPORTED_TARGET liburing)
pkg_check_modules(ISAL REQUIRED IMPORTED_TARGET libisal)

find_program(SPILL_GRPC_CPP_PLUGIN grpc_cpp_plugin REQUIRED)

set(SPILL_HAVE_CUDA OFF)
if(SPILL_WITH_CUDA)
  find_package(CUDAToolkit QUIET)
  if(CUDAToolkit_FOUND)
    set(SPILL_HAVE_CUDA ON)
    message(STATUS "spill: CUDA ${CUDAToolkit_VERSION} found; client registers segments with cudaHostRegister")
  else()
    message(STATUS "spill: CUDA toolkit not found; client built without segment registration")
  endif()
endif()

if(SPILL_BUILD_TESTS)
  find_package(GTest REQUIRED)
endif()
if(SPILL_BUILD_BENCH)
  find_package(benchmark QUIET)
endif()
