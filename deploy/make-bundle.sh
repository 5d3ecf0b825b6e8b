#!/usr/bin/env bash
# Makes Spill's offline bundle for GPU nodes without network access (a node
# with glibc >= 2.36, e.g. Ubuntu 24.04, and CUDA, PyTorch and a compiler, but
# no gRPC, protobuf, abseil or liburing):
#   out/spill-bundle-VERSION-ARCH.tar.gz  (or that directory, with --dir)
# holding bin/ (spilld, spillctl, spill_demo and every other program of the
# build: benchmarks, tests), lib/ (libspill_client and each shared library the
# programs need that the node lacks), include/ (the client's public headers and
# the abseil they use), a CMake package (find_package(Spill CONFIG),
# Spill::client), env.sh, install.sh, README.txt and BUILD-INFO.txt. On the
# node:  tar xzf spill-bundle-*.tar.gz && spill-bundle-*/install.sh /opt/spill
#
# Builds the release preset first (with CUDA when the toolkit is found, so the
# client registers its segments with cudaHostRegister), after installing the
# Debian packages that are missing.
#
# Usage: deploy/make-bundle.sh [options]
#   --out=DIR          where the bundle goes (default: out/)
#   --dir              leave a directory instead of a .tar.gz
#   --no-tests         leave out the test programs (those ctest runs)
#   --with-fio         also carry Debian's fio (the NVMe benchmark's baseline)
#                      with the libraries it needs
#   --no-build         use build/release as it is
#   --check            then unpack the bundle into a temporary directory,
#                      install it there and run its bin/spill-selftest with
#                      nothing but its env.sh (libraries, spilld --help, a demo
#                      job, an example built with find_package(Spill))
#   --check-only=PATH  only check an existing bundle (.tar.gz or directory)
#   --with-worker      also carry the LibTorch programs: spill-train, the worker
#                      tests (worker_*_test) and the zero3_train benchmark (and
#                      its zero3_lanes_test), built
#                      in release against the torch of $SPILL_PYTHON (default
#                      python3) in build/release-worker. LibTorch, CUDA and NCCL
#                      are not carried: env.sh takes them from the node's torch
#                      (share/spill/torch-libs.txt lists which).
#   --worker-build-dir=DIR  implies --with-worker: build the worker programs
#                      in DIR instead (an existing build tree is built
#                      incrementally, only the worker targets; with
#                      --no-build, used as it is)
# Environment: SPILL_JOBS (nproc) build jobs; SPILL_PYTHON (python3) the
# Python whose torch the worker programs are built against.
set -euo pipefail
# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/common.sh"

templates=$SPILL_ROOT/deploy/bundle
build=$SPILL_ROOT/build/release
out=$SPILL_ROOT/out
as_dir=0
with_tests=1
with_fio=0
do_build=1
check=0
check_only=
max_bytes=$((64 << 20))  # What the GPU nodes' transfer tool carries.
with_worker=0
worker_build=$SPILL_ROOT/build/release-worker
torch_python=${SPILL_PYTHON:-python3}

usage() { sed -n '2,41s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }

for arg in "$@"; do
  case $arg in
    --out=*) out=$(mkdir -p "${arg#--out=}" && cd "${arg#--out=}" && pwd) ;;
    --dir) as_dir=1 ;;
    --no-tests) with_tests=0 ;;
    --with-fio) with_fio=1 ;;
    --no-build) do_build=0 ;;
    --check) check=1 ;;
    --check-only=*) check_only=${arg#--check-only=} ;;
    --with-worker) with_worker=1 ;;
    --worker-build-dir=*) with_worker=1; worker_build=$(realpath -m "${arg#--worker-build-dir=}") ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
  esac
done

scratch=$(mktemp -d "${TMPDIR:-/tmp}/spill-bundle.XXXXXX")
trap 'rm -rf "$scratch"' EXIT

# --- what goes in -----------------------------------------------------------

is_elf() { [ -f "$1" ] && [ "$(head -c 4 "$1" | tr -d '\0')" = $'\x7fELF' ]; }
# A program (not a shared library) asks for a program interpreter.
is_program() { is_elf "$1" && readelf -lW "$1" 2>/dev/null | grep -q 'program interpreter'; }

node_patterns=()
while read -r line; do
  case $line in "" | "#"*) ;; *) node_patterns+=("$line") ;; esac
done <"$templates/node-libs.txt"
is_node_lib() {  # is_node_lib SONAME PATH
  local pattern
  case $2 in */cuda*/*) return 0 ;; esac
  for pattern in "${node_patterns[@]}"; do
    # shellcheck disable=SC2254  # The pattern is a glob on purpose.
    case $1 in $pattern) return 0 ;; esac
  done
  return 1
}

# Writes "PROGRAM<TAB>LABELS" for every program that ctest runs in build
# tree $1 (default: $build).
list_tests() {
  (cd "${1:-$build}" && ctest --show-only=json-v1) | python3 -c '
import json, os, sys
labels = {}
for test in json.load(sys.stdin).get("tests", []):
    command = test.get("command") or []
    if not command or not os.path.isabs(command[0]):
        continue
    names = labels.setdefault(os.path.realpath(command[0]), set())
    for prop in test.get("properties", []):
        if prop.get("name") == "LABELS":
            names.update(prop.get("value") or [])
for path, names in sorted(labels.items()):
    print(path + "\t" + ",".join(sorted(names)))
'
}

# A program linked against LibTorch (only --with-worker carries those).
links_torch() { readelf -dW "$1" 2>/dev/null | grep -qE 'NEEDED.*\[lib(torch|c10)'; }

# Copies every program the build made into bin/, except LibTorch programs
# (see copy_worker_programs). A test is a program that ctest runs or whose
# name says test, other than spilld, spillctl and spill_demo (which tests run
# too); --no-tests leaves tests out.
copy_programs() {
  local stage=$1 file name labels skipped=0 torch=0
  list_tests >"$scratch/tests.tsv"
  : >"$stage/share/spill/tests.tsv"
  while IFS= read -r -d '' file; do
    is_program "$file" || continue
    if links_torch "$file"; then torch=$((torch + 1)); continue; fi
    name=$(basename "$file")
    labels=$(awk -F'\t' -v p="$(realpath "$file")" \
      '$1 == p { print ($2 == "" ? "-" : $2); exit }' "$scratch/tests.tsv")
    case $name in
      spilld | spillctl | spill_demo) labels= ;;
      *test*) labels=${labels:-"- (not run by ctest directly)"} ;;
    esac
    if [ -n "$labels" ]; then
      if [ $with_tests -eq 0 ]; then skipped=$((skipped + 1)); continue; fi
      printf '%s\t%s\n' "$name" "$labels" >>"$stage/share/spill/tests.tsv"
    fi
    [ ! -e "$stage/bin/$name" ] || spill_die "two programs named $name in $build"
    cp "$file" "$stage/bin/$name"
  done < <(find "$build/" -name CMakeFiles -prune -o -type f -perm -u+x -print0 | sort -z)
  for name in spilld spillctl spill_demo; do
    [ -x "$stage/bin/$name" ] || spill_die "$name was not built"
  done
  spill_info "programs: $(cd "$stage/bin" && echo *)"
  [ $skipped -eq 0 ] || spill_info "left out $skipped test programs (--no-tests)"
  [ $torch -eq 0 ] || spill_info "left out $torch LibTorch programs of $build (--with-worker builds them)"
}

# --- the worker programs (--with-worker) ----------------------------------

# Built in $worker_build; worker_nccl_test only where NCCL was found.
worker_programs=(spill-train zero3_train zero3_lanes_test worker_engine_test worker_engine_api_test
  worker_collectives_test worker_torch_spilld_test worker_gpt_test)
worker_optional=(worker_nccl_test)
torch_dirs=  # ':'-list of the build machine's torch library directories

# Configures $worker_build when it has no build yet, then builds (with
# --no-build: only checks) the worker targets there; sets worker_programs to
# those this tree has.
build_worker() {
  local cache=$worker_build/CMakeCache.txt type targets name present=()
  "$torch_python" -c 'import torch' 2>/dev/null ||
    spill_die "--with-worker: $torch_python cannot import torch (set SPILL_PYTHON to a Python with torch)"
  torch_dirs=$("$torch_python" "$templates/torch-libdirs.py") ||
    spill_die "--with-worker: cannot find the library directories of $torch_python's torch"
  if [ $do_build -eq 1 ] && [ ! -f "$cache" ]; then
    spill_step "configure $worker_build (release, LibTorch of $torch_python)"
    cmake -S "$SPILL_ROOT" -B "$worker_build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
      -DCMAKE_EXPORT_COMPILE_COMMANDS=ON -DSPILL_PYTHON="$(command -v "$torch_python")" >/dev/null ||
      spill_die "configuring $worker_build failed"
  fi
  [ -f "$cache" ] || spill_die "no build in $worker_build (run without --no-build)"
  type=$(sed -n 's/^CMAKE_BUILD_TYPE:[A-Z]*=//p' "$cache")
  case $type in Release | RelWithDebInfo) ;;
    *) spill_die "$worker_build is a '$type' build; the bundle carries release programs" ;; esac
  targets=$(cmake --build "$worker_build" -- -t targets all 2>/dev/null | sed -n 's/^\([^:/]*\): .*/\1/p')
  for name in "${worker_programs[@]}" "${worker_optional[@]}"; do
    if grep -qxF "$name" <<<"$targets"; then
      present+=("$name")
    elif [[ " ${worker_programs[*]} " == *" $name "* ]]; then
      spill_die "$worker_build has no target $name: LibTorch was not found when it was" \
        "configured (see its 'spill:' CMake messages; SPILL_PYTHON=$torch_python)"
    else
      spill_info "$worker_build has no $name (built only with NCCL); left out"
    fi
  done
  worker_programs=("${present[@]}")
  if [ $do_build -eq 1 ]; then
    spill_step "build the worker programs in $worker_build (-j$SPILL_JOBS)"
    cmake --build "$worker_build" -j"$SPILL_JOBS" --target "${worker_programs[@]}" spill-estimate ||
      spill_die "building the worker programs failed"
  fi
}

# Copies the worker programs into bin/ (tests into tests.tsv with their
# ctest labels), the default training text and the torch finder env.sh runs.
copy_worker_programs() {
  local stage=$1 name file labels
  list_tests "$worker_build" >"$scratch/worker-tests.tsv"
  for name in "${worker_programs[@]}"; do
    file=$(find "$worker_build" -name CMakeFiles -prune -o -type f -name "$name" -perm -u+x -print |
      head -n 1)
    [ -n "$file" ] || spill_die "$name was not built in $worker_build"
    links_torch "$file" || spill_die "$file does not link LibTorch"
    if [[ $name == *test* ]]; then
      [ $with_tests -eq 1 ] || continue
      labels=$(awk -F'\t' -v p="$(realpath "$file")" \
        '$1 == p { print ($2 == "" ? "-" : $2); exit }' "$scratch/worker-tests.tsv")
      printf '%s\t%s\n' "$name" "${labels:-"- (not run by ctest directly)"}" \
        >>"$stage/share/spill/tests.tsv"
    fi
    [ ! -e "$stage/bin/$name" ] || spill_die "two programs named $name"
    cp "$file" "$stage/bin/$name"
  done
  # spill-estimate needs no LibTorch: the release tree's, else this one's.
  if [ ! -e "$stage/bin/spill-estimate" ]; then
    file=$(find "$worker_build" -name CMakeFiles -prune -o -type f -name spill-estimate -perm -u+x -print |
      head -n 1)
    [ -n "$file" ] || spill_die "spill-estimate was built neither in $build nor in $worker_build"
    cp "$file" "$stage/bin/spill-estimate"
  fi
  mkdir -p "$stage/share/spill/data"
  cp "$SPILL_ROOT/worker/data/corpus.txt" "$stage/share/spill/data/"
  cp "$templates/torch-libdirs.py" "$stage/share/spill/"
  spill_info "worker programs from $worker_build: ${worker_programs[*]}"
}

# Whether a resolved library lies in one of $torch_dirs.
in_torch_dirs() {
  local real dir rest=$torch_dirs
  real=$(realpath "$1")
  while [ -n "$rest" ]; do
    dir=${rest%%:*}
    case $rest in *:*) rest=${rest#*:} ;; *) rest= ;; esac
    [[ $real != "$(realpath "$dir")/"* ]] || return 0
  done
  return 1
}

# Copies the shared libraries the build made (libspill_client.so and its
# version links) into lib/.
copy_own_libs() {
  local stage=$1 file
  while IFS= read -r -d '' file; do
    if [ -L "$file" ] || is_elf "$file"; then cp -P "$file" "$stage/lib/"; fi
  done < <(find "$build/" -name CMakeFiles -prune -o -name 'lib*.so*' \( -type f -o -type l \) -print0)
  [ -e "$stage/lib/libspill_client.so" ] || spill_die "libspill_client.so was not built"
}

# Benchmark scripts (share/spill/bench) and, with --with-fio, fio itself.
copy_bench_tools() {
  local stage=$1 fio
  mkdir -p "$stage/share/spill/bench"
  cp "$SPILL_ROOT"/bench/*.py "$SPILL_ROOT"/bench/*.sh "$stage/share/spill/bench/" 2>/dev/null || true
  if [ "$with_fio" -eq 1 ]; then
    spill_ensure_deps fio
    fio=$(command -v fio) || spill_die "--with-fio: fio is not installed"
    cp "$fio" "$stage/bin/fio"
  fi
}

# Drops the build tree's RPATH from our programs and libraries and strips them.
finish_own_files() {
  local stage=$1 file list=$scratch/own-files.txt
  : >"$list"
  for file in "$stage"/bin/* "$stage"/lib/*; do
    if [ ! -L "$file" ] && is_elf "$file"; then echo "$file" >>"$list"; fi
  done
  cat >"$scratch/rpath.cmake" <<'CMAKE'
file(STRINGS "${LIST}" files)
foreach(f IN LISTS files)
  file(RPATH_REMOVE FILE "${f}")
endforeach()
CMAKE
  cmake -DLIST="$list" -P "$scratch/rpath.cmake" >/dev/null
  while IFS= read -r file; do
    case $file in
      "$stage"/bin/*) strip --strip-all "$file" ;;
      *) strip --strip-unneeded "$file" ;;
    esac
  done <"$list"
}

# The Debian package that owns a file ("-" when none does).
deb_package_of() {
  local path=$1 candidate pkg
  for candidate in "$path" "$(realpath "$path")" "/lib/${path#/usr/lib/}"; do
    pkg=$(dpkg-query -S "$candidate" 2>/dev/null | head -n 1 | cut -d: -f1) || true
    if [ -n "$pkg" ]; then
      echo "$pkg"
      return
    fi
  done
  echo -
}

# Copies into lib/ each library that a program or library of ours needs and
# node-libs.txt does not leave to the node (ldd gives the whole closure).
declare -A bundled_from=() node_from=() torch_from=()
copy_deps() {
  local stage=$1 file name arrow path rest
  for file in "$stage"/bin/* "$stage"/lib/*; do
    if [ -L "$file" ] || ! is_elf "$file"; then continue; fi
    while read -r name arrow path rest; do
      [ "$arrow" = "=>" ] || continue
      [ "$path" != not ] || spill_die "$(basename "$file") needs $name, which is not found here"
      [[ $path != "$stage/lib/"* ]] || continue
      if [ -n "$torch_dirs" ] && in_torch_dirs "$path"; then
        torch_from[$name]=$path
      elif is_node_lib "$name" "$path"; then
        node_from[$name]=$path
      elif [ ! -e "$stage/lib/$name" ]; then
        cp -L "$path" "$stage/lib/$name"
        bundled_from[$name]=$path
      fi
    done < <(LD_LIBRARY_PATH="$stage/lib${torch_dirs:+:$torch_dirs}" ldd "$file")
  done
  spill_info "bundled ${#bundled_from[@]} libraries; from the node: $(printf '%s\n' "${!node_from[@]}" | sort | tr '\n' ' ')"
  if [ ${#torch_from[@]} -ne 0 ]; then
    spill_info "from the node's torch: $(printf '%s\n' "${!torch_from[@]}" | sort | tr '\n' ' ')"
    {
      echo "# Libraries the worker programs take from the node's torch package (torch/lib"
      echo "# and nvidia/*/lib), found through env.sh's SPILL_TORCH_LIBS; one soname a line."
      printf '%s\n' "${!torch_from[@]}" | sort
    } >"$stage/share/spill/torch-libs.txt"
  fi
}

# include/: the client's public headers and the abseil headers they include.
copy_headers() {
  local stage=$1 foreign
  cp -R "$SPILL_ROOT/client/include/." "$stage/include/"
  foreign=$(grep -rhE '^#include +"' "$stage/include" | grep -vE '"(spill|absl)/' || true)
  [ -z "$foreign" ] || spill_die "client/include includes headers the bundle does not carry: $foreign"
  cp -R /usr/include/absl "$stage/include/absl"
}

# lib/cmake/Spill: the package that find_package(Spill CONFIG) reads.
write_cmake_package() {
  local stage=$1 version=$2 with_cuda=$3 dir client soname absl
  dir=$stage/lib/cmake/Spill
  mkdir -p "$dir"
  client=$(basename "$(readlink -f "$stage/lib/libspill_client.so")")
  soname=$(readelf -d "$stage/lib/$client" | sed -n 's/.*Library soname: \[\(.*\)\].*/\1/p')
  absl=$(cd "$stage/lib" && find . -maxdepth 1 -name 'libabsl_*.so.*' -printf '%f\n' | sort | tr '\n' ' ')
  sed -e "s|@SPILL_VERSION@|$version|g" -e "s|@SPILL_CLIENT_FILE@|$client|g" \
    -e "s|@SPILL_CLIENT_SONAME@|$soname|g" -e "s|@SPILL_ABSL_LIBS@|${absl% }|g" \
    -e "s|@SPILL_WITH_CUDA@|$with_cuda|g" \
    "$templates/SpillConfig.cmake.in" >"$dir/SpillConfig.cmake"
  cat >"$scratch/version.cmake" <<'CMAKE'
include(CMakePackageConfigHelpers)
set(CMAKE_SIZEOF_VOID_P 8)
write_basic_package_version_file("${OUT}" VERSION "${VERSION}" COMPATIBILITY SameMinorVersion)
CMAKE
  cmake -DOUT="$dir/SpillConfigVersion.cmake" -DVERSION="$version" -P "$scratch/version.cmake"
}

# env.sh, install.sh, README.txt, the self-test, the demo job and the example.
write_support_files() {
  local stage=$1 version=$2 name=$3 cudart=$4 cuda_note="CUDA: $5."
  if [ -n "$cudart" ]; then
    cuda_note+=" For $cudart, env.sh adds \$CUDA_HOME/lib64 or /usr/local/cuda/lib64"
    cuda_note+=" to LD_LIBRARY_PATH when the loader does not find it by itself."
  fi
  sed "s|@SPILL_CUDART@|$cudart|g" "$templates/env.sh" >"$stage/env.sh"
  sed "s|@SPILL_VERSION@|$version|g" "$templates/install.sh" >"$stage/install.sh"
  sed -e "s|@SPILL_VERSION@|$version|g" -e "s|@SPILL_ARCH@|$(uname -m)|g" \
    -e "s|@SPILL_BUNDLE@|$name|g" "$templates/README.txt" |
    awk -v note="$(fold -s -w 78 <<<"$cuda_note" | sed 's/ *$//')" \
      '$0 == "@SPILL_CUDA_NOTE@" { print note; next } { print }' >"$stage/README.txt"
  cp "$templates/spill-selftest" "$stage/bin/spill-selftest"
  cp "$SPILL_ROOT/scripts/run-demo-job.sh" "$stage/bin/spill-demo-job"
  chmod 755 "$stage/install.sh" "$stage/bin/spill-selftest" "$stage/bin/spill-demo-job"
  cp "$templates/node-libs.txt" "$stage/share/spill/"
  cp -R "$templates/example" "$stage/share/spill/example"
}

# BUILD-INFO.txt: what was built from what, and where each library came from;
# share/doc/spill/licenses/: the copyright file of every bundled package.
write_build_info() {
  local stage=$1 version=$2 cuda=$3 commit name pkg
  commit=$(git -C "$SPILL_ROOT" rev-parse HEAD 2>/dev/null || echo unknown)
  if ! git -C "$SPILL_ROOT" diff --quiet HEAD 2>/dev/null; then commit+=" with uncommitted changes"; fi
  {
    echo "Spill $version bundle for $(uname -m)"
    # shellcheck disable=SC1091
    echo "built:    $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(. /etc/os-release && echo "$PRETTY_NAME")," \
      "glibc $(ldd --version | head -n 1 | awk '{print $NF}'), $(c++ --version | head -n 1)"
    echo "source:   git $commit"
    echo "preset:   release ($(sed -n 's/^CMAKE_BUILD_TYPE:[A-Z]*=//p' "$build/CMakeCache.txt")), stripped"
    echo "CUDA:     $cuda"
    echo
    echo "bundled libraries (lib/), with the Debian package each came from:"
    for name in $(printf '%s\n' "${!bundled_from[@]}" | sort); do
      pkg=$(deb_package_of "${bundled_from[$name]}")
      printf '  %-46s %s %s\n' "$name" "$pkg" "$(dpkg-query -W -f='${Version}' "$pkg" 2>/dev/null)"
      [ "$pkg" = - ] || cp "/usr/share/doc/$pkg/copyright" "$stage/share/doc/spill/licenses/$pkg.copyright"
    done
    echo "include/absl: libabsl-dev $(dpkg-query -W -f='${Version}' libabsl-dev 2>/dev/null)"
    echo
    echo "taken from the node (share/spill/node-libs.txt):"
    printf '  %s\n' "${!node_from[@]}" | sort
    if [ $with_worker -eq 1 ]; then
      echo
      echo "worker programs (${worker_programs[*]}): built in $worker_build"
      echo "  ($(sed -n 's/^CMAKE_BUILD_TYPE:[A-Z]*=//p' "$worker_build/CMakeCache.txt")) against torch" \
        "$("$torch_python" -c 'import torch; print(torch.__version__)' 2>/dev/null) of $torch_python;"
      echo "  taken from the node's torch (share/spill/torch-libs.txt):"
      printf '  %s\n' "${!torch_from[@]}" | sort
    fi
  } >"$stage/BUILD-INFO.txt"
}

# Leaves the bundle in $out as a .tar.gz (or a directory); sets $result.
pack() {
  local stage=$1 name=$2 bytes
  mkdir -p "$out"
  if [ $as_dir -eq 1 ]; then
    result=$out/$name
    rm -rf "$result"
    mv "$stage" "$result"
    bytes=$(du -sb "$result" | cut -f 1)
  else
    result=$out/$name.tar.gz
    tar --sort=name --owner=0 --group=0 --numeric-owner -C "$(dirname "$stage")" \
      -czf "$result" "$name"
    bytes=$(stat -c %s "$result")
  fi
  spill_info "$(awk -v b="$bytes" 'BEGIN { printf "%.1f MiB", b / 1048576 }'): $result"
  [ "$bytes" -le $max_bytes ] || spill_die "the bundle is larger than $((max_bytes >> 20)) MiB"
}

# Unpacks a bundle, installs it into a temporary prefix and runs its
# self-test with a clean environment and nothing but the bundle's env.sh.
check_bundle() {
  local path=$1 dir=$scratch/check root
  [ -e "$path" ] || spill_die "no bundle at $path"
  mkdir -p "$dir/unpacked"
  spill_step "check: unpack $(basename "$path") and install it into a temporary prefix"
  if [ -d "$path" ]; then cp -a "$path" "$dir/unpacked/"; else tar -xzf "$path" -C "$dir/unpacked"; fi
  root=$(find "$dir/unpacked" -mindepth 1 -maxdepth 1 -type d | head -n 1)
  "$root/install.sh" "$dir/prefix" | sed 's/^/    /'
  spill_step "check: spill-selftest under env -i, with only env.sh's PATH and LD_LIBRARY_PATH"
  # shellcheck disable=SC2016  # Expanded by the inner shell.
  env -i HOME="$HOME" PATH=/usr/bin:/bin LANG=C.UTF-8 TMPDIR="$dir" \
    SPILL_TORCH_PYTHON="$(command -v "$torch_python" || echo python3)" \
    bash -c '. "$1/env.sh" && echo "    LD_LIBRARY_PATH=$LD_LIBRARY_PATH" && exec spill-selftest' \
    _ "$dir/prefix" || spill_die "the bundle's self-test failed"
  # shellcheck disable=SC2016  # Expanded by the inner shell.
  env -i PATH=/usr/bin:/bin SPILL_TORCH_PYTHON="$(command -v "$torch_python" || echo python3)" \
    sh -c '. "$1/env.sh" && spillctl --help >/dev/null' _ "$dir/prefix" ||
    spill_die "the installed env.sh does not work from sh"
  spill_info "the installed env.sh also works from sh"
  printf '\nBUNDLE CHECK OK: %s\n' "$path"
}

main() {
  if [ -n "$check_only" ]; then
    check_bundle "$(realpath "$check_only")"
    return
  fi
  spill_step "install missing Debian packages"
  spill_ensure_deps python3
  if [ $do_build -eq 1 ]; then
    spill_step "configure and build preset release (-j$SPILL_JOBS)"
    # Without LibTorch (SPILL_PYTHON is for the worker build): the release
    # tree's programs do not link it.
    (unset SPILL_PYTHON && spill_build_preset release) || spill_die "build failed"
  fi
  if [ $with_worker -eq 1 ]; then build_worker; fi
  [ -f "$build/CMakeCache.txt" ] || spill_die "no build in $build (run without --no-build)"

  local version name stage cudart cuda nvcc with_cuda=OFF
  version=$(sed -n 's/^CMAKE_PROJECT_VERSION:STATIC=//p' "$build/CMakeCache.txt")
  name=spill-bundle-$version-$(uname -m)
  stage=$scratch/$name
  spill_step "assemble $name"
  mkdir -p "$stage"/{bin,lib,include,share/spill,share/doc/spill/licenses}
  copy_programs "$stage"
  if [ $with_worker -eq 1 ]; then copy_worker_programs "$stage"; fi
  if [ $with_tests -eq 0 ]; then rm "$stage/share/spill/tests.tsv"; fi
  copy_own_libs "$stage"
  finish_own_files "$stage"
  copy_bench_tools "$stage"
  copy_deps "$stage"
  copy_headers "$stage"
  # The shared CUDA runtime some programs (benchmarks, GPU tests) may need.
  cudart=$(printf '%s\n' "${!node_from[@]}" | grep -m 1 '^libcudart\.so' || true)
  cuda="built without CUDA: the client does not register segments with cudaHostRegister"
  if grep -q 'SPILL_CLIENT_WITH_CUDA=1' "$build/compile_commands.json"; then
    with_cuda=ON
    nvcc=$(sed -n 's/^CUDAToolkit_NVCC_EXECUTABLE:[A-Z]*=//p' "$build/CMakeCache.txt")
    cuda="built with CUDA $("$nvcc" --version | sed -n 's/.*release \([0-9.]*\).*/\1/p'):"
    cuda+=" the client registers segments with cudaHostRegister (needs the node's NVIDIA driver)"
  fi
  if [ -n "$cudart" ]; then cuda+="; $cudart comes from the node"; fi
  write_cmake_package "$stage" "$version" "$with_cuda"
  write_support_files "$stage" "$version" "$name" "$cudart" "$cuda"
  write_build_info "$stage" "$version" "$cuda"
  spill_step "pack"
  pack "$stage" "$name"
  if [ $check -eq 1 ]; then check_bundle "$result"; fi
}

main
