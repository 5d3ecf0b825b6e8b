#!/usr/bin/env bash
# Checks deploy/systemd: `systemd-analyze verify` accepts spilld.service with
# no warning at all (it exits 0 on unknown keys, so any output fails), the
# settings spilld needs are there, and spilld --validate accepts spilld.json.
# A unit with a bad key must fail the same check (the check can fail).
# usage: verify_test.sh SPILLD
set -u
spilld=$1
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0

# verify needs ExecStart's binary to exist: point it at the built one.
verify() {
  local unit=$1 out
  out=$(systemd-analyze verify "$unit" 2>&1)
  local rc=$?
  if [ $rc -ne 0 ] || [ -n "$out" ]; then
    printf '%s\n' "$out"
    return 1
  fi
}
sed "s|^ExecStart=/usr/bin/spilld |ExecStart=$spilld |" "$here/spilld.service" >"$tmp/spilld.service"
grep -q "^ExecStart=$spilld " "$tmp/spilld.service" || { echo "ExecStart not substituted"; fail=1; }
if ! verify "$tmp/spilld.service"; then
  echo "FAIL: systemd-analyze verify spilld.service"
  fail=1
fi

sed 's/^NoNewPrivileges=yes/NoNewPrivileges=yes\nNoSuchKey=1/' "$tmp/spilld.service" >"$tmp/bad.service"
if verify "$tmp/bad.service" >/dev/null; then
  echo "FAIL: a unit with an unknown key passed verification"
  fail=1
fi

for want in 'LimitMEMLOCK=infinity' 'RuntimeDirectory=spill' 'RuntimeDirectoryMode=0750' \
  'Group=spill' 'Restart=on-failure' 'CapabilityBoundingSet=CAP_IPC_LOCK' \
  'AmbientCapabilities=CAP_IPC_LOCK' 'NoNewPrivileges=yes' 'ProtectSystem=strict' \
  'ProtectHome=yes' 'PrivateTmp=yes' 'ProtectKernelTunables=yes' \
  'RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6' 'Type=exec' \
  'ExecStart=/usr/bin/spilld --config=/etc/spill/spilld.json'; do
  grep -qxF "$want" "$here/spilld.service" || { echo "FAIL: missing '$want'"; fail=1; }
done
# spilld does not call sd_notify: Type=notify would hang the start.
if grep -q '^Type=notify' "$here/spilld.service"; then echo "FAIL: Type=notify"; fail=1; fi
if ! grep -rqs sd_notify "$here/../../server"; then :; else
  echo "note: spilld now calls sd_notify; consider Type=notify"
fi
# The syscall filter must still let io_uring, mlock and memfd through.
# Groups (@name) nest; expand them recursively.
expand() {
  local item
  for item in "$@"; do
    case $item in
      @*) expand $(systemd-analyze syscall-filter "$item" 2>/dev/null | sed -n '2,$p' |
        grep -v '^ *#' | tr -d ' ') ;;
      *) echo "$item" ;;
    esac
  done
}
allowed=$(expand $(grep '^SystemCallFilter=[^~]' "$here/spilld.service" | cut -d= -f2-) | sort -u)
denied=$(expand $(grep '^SystemCallFilter=~' "$here/spilld.service" | cut -d~ -f2-) | sort -u)
for call in io_uring_setup io_uring_enter io_uring_register mlock mlock2 memfd_create mmap \
  fcntl sendmsg recvmsg setrlimit prlimit64 getrandom accept4 epoll_wait; do
  if ! grep -qxF "$call" <<<"$allowed"; then echo "FAIL: filter does not allow $call"; fail=1; fi
  if grep -qxF "$call" <<<"$denied"; then echo "FAIL: filter denies $call"; fail=1; fi
done
# The socket must live in the runtime directory.
sock=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["socket"])' "$here/spilld.json")
case $sock in /run/spill/*) ;; *) echo "FAIL: socket $sock is not in /run/spill"; fail=1 ;; esac

if ! out=$("$spilld" --validate --config="$here/spilld.json" 2>&1); then
  printf '%s\n' "$out"
  echo "FAIL: spilld --validate rejects spilld.json"
  fail=1
fi
[ $fail -eq 0 ] && echo "systemd unit and sample config OK"
exit $fail
