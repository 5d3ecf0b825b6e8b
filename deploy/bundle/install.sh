#!/bin/sh
# Installs this Spill bundle:  ./install.sh [PREFIX]   (default /opt/spill)
#
# Copies bin/, lib/, include/, share/ and env.sh into PREFIX (over an earlier
# install of the same layout), then prints how to use it. Needs no network.
set -eu
src=$(cd "$(dirname "$0")" && pwd)
prefix=${1:-/opt/spill}
case $prefix in
  -h | --help) sed -n '2,5s/^# \{0,1\}//p' "$0"; exit 0 ;;
  /*) ;;
  *) prefix=$(pwd)/$prefix ;;
esac

if ! mkdir -p "$prefix" 2>/dev/null || [ ! -w "$prefix" ]; then
  echo "install.sh: cannot write to $prefix: run it as root (sudo ./install.sh)" \
    "or give a PREFIX you own, e.g. ./install.sh \$HOME/spill" >&2
  exit 1
fi
prefix=$(cd "$prefix" && pwd)
if [ "$prefix" != "$src" ]; then
  for dir in bin lib include share; do
    mkdir -p "$prefix/$dir"
    cp -R -P "$src/$dir/." "$prefix/$dir/"
  done
  mkdir -p "$prefix/share/doc/spill"
  cp "$src/README.txt" "$src/BUILD-INFO.txt" "$prefix/share/doc/spill/"
fi
sed "s|^SPILL_HOME_DEFAULT=.*|SPILL_HOME_DEFAULT='$prefix'|" "$src/env.sh" >"$prefix/env.sh.new"
mv "$prefix/env.sh.new" "$prefix/env.sh"

cat <<USAGE
Spill @SPILL_VERSION@ is installed in $prefix.

  . $prefix/env.sh       # PATH, LD_LIBRARY_PATH, CMAKE_PREFIX_PATH (add it to ~/.bashrc)
  spill-selftest         # checks the install: libraries, a demo job, an example build
  spilld --socket=/run/spill/spilld.sock --pinned-bytes=64GiB   # the daemon; spilld --help
  spillctl stats         # tiers, jobs, requests (--socket=PATH or \$SPILL_SOCKET)

Build against it with CMake (example: $prefix/share/spill/example):
  find_package(Spill CONFIG REQUIRED)
  target_link_libraries(my_app PRIVATE Spill::client)
USAGE
