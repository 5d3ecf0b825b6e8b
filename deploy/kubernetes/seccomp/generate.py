#!/usr/bin/env python3
"""Writes spilld.json, the seccomp profile of the spilld container.

Container runtimes' RuntimeDefault profiles deny io_uring_setup,
io_uring_enter and io_uring_register, which the NVMe tier needs. This
profile allows what systemd's @system-service set allows (the set the
systemd unit in deploy/systemd uses; it covers ordinary service work: files,
sockets, threads, signals, mmap/mlock, memfd, timers) plus, explicitly, the
three io_uring calls, and denies everything else with EPERM.

The list comes from `systemd-analyze syscall-filter` of the installed
systemd (groups expanded recursively), so regenerating it on a newer systemd
picks up newer system calls. Usage: generate.py [OUTPUT]
"""
import json
import subprocess
import sys

EXTRA = ["io_uring_setup", "io_uring_enter", "io_uring_register"]


def expand(item, seen):
    if not item.startswith("@"):
        return {item}
    if item in seen:
        return set()
    seen.add(item)
    out = subprocess.run(["systemd-analyze", "syscall-filter", item], check=True,
                         capture_output=True, text=True).stdout.splitlines()
    names = set()
    for line in out[1:]:
        line = line.strip()
        if line and not line.startswith("#"):
            names |= expand(line, seen)
    return names


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else "spilld.json"
    names = sorted(expand("@system-service", set()) | set(EXTRA))
    profile = {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 1,
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32",
                          "SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
        "syscalls": [{"names": names, "action": "SCMP_ACT_ALLOW"}],
    }
    with open(path, "w", encoding="utf-8") as f:
        json.dump(profile, f, indent=2)
        f.write("\n")
    print(f"{path}: {len(names)} system calls allowed")


if __name__ == "__main__":
    main()
