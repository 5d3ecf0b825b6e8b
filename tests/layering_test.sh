#!/usr/bin/env bash
# Fails when a directory includes what the dependency direction forbids:
# storage/ and server/optim/ never see gRPC, protobuf or torch; client/ never
# includes storage/ or server/; client's public headers include no gRPC or
# protobuf (training code compiles them next to LibTorch's protobuf).
set -u
root=${1:?usage: layering_test.sh REPO_ROOT}
cd "$root" || exit 2
fail=0
check() {  # check DESCRIPTION PATTERN DIRS...
  local what=$1 pattern=$2; shift 2
  local hits
  hits=$(grep -rnE --include='*.h' --include='*.cc' --include='*.cu' "$pattern" "$@" 2>/dev/null)
  if [ -n "$hits" ]; then
    echo "layering violation: $what"; echo "$hits"; fail=1
  fi
}
check "storage/ must not include gRPC, protobuf or torch" \
  '#include *[<"](grpc|grpcpp|google/protobuf|spill/v1|torch|ATen|c10)/' storage
if [ -d server/optim ]; then
  check "server/optim/ must not include gRPC, protobuf or torch" \
    '#include *[<"](grpc|grpcpp|google/protobuf|spill/v1|torch|ATen|c10)/' server/optim
fi
check "client/ must not include storage/ or server/" '#include *"(storage|server)/' client
check "client's public headers must not include gRPC or protobuf" \
  '#include *[<"](grpc|grpcpp|google/protobuf|spill/v1|proto)/' client/include
# worker/ compiles next to LibTorch's protobuf headers; only its spilld test
# fixture (built without torch) may reach the generated code.
if [ -d worker ]; then
  hits=$(grep -rnE --include='*.h' --include='*.cc' --exclude=spilld_fixture.cc \
    '#include *[<"](grpc|grpcpp|google/protobuf|spill/v1)/|#include *"tests/integration/' worker 2>/dev/null)
  if [ -n "$hits" ]; then
    echo "layering violation: worker/ must not include gRPC or protobuf"; echo "$hits"; fail=1
  fi
fi
[ $fail -eq 0 ] && echo "layering OK"
exit $fail
