#!/usr/bin/env python3
"""Lints deploy/container/Dockerfile without building it (image builds need
network access to Debian's mirrors):

- two stages on debian:12: a build stage that installs scripts/common.sh's
  SPILL_DEB_PACKAGES and builds the release preset, and a runtime stage;
- the runtime stage installs a package for every shared library that the
  built spilld and spillctl load (ldd + dpkg -S on this Debian 12 machine),
  copies the project's own libraries from the build stage, runs as a
  non-root user in group spill, and has spilld as its ENTRYPOINT;
- no build tool or -dev package in the runtime stage.
A Dockerfile missing a needed package must fail the same check.

usage: dockerfile_test.py SPILLD SPILLCTL
"""
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
# In every debian:12 image (Essential/required packages).
BASE = {"libc6", "libgcc-s1", "libstdc++6", "zlib1g"}


def instructions(text):
    text = re.sub(r"\\\n", " ", text)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def stages(instrs):
    result = []
    for word, rest in instrs:
        if word == "FROM":
            m = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", rest, re.I)
            result.append({"image": m.group(1), "name": m.group(2), "body": []})
        elif result:
            result[-1]["body"].append((word, rest))
    return result


def installed_packages(stage):
    packages = set()
    for word, rest in stage["body"]:
        if word == "RUN" and "apt-get install" in rest:
            tail = rest.split("apt-get install", 1)[1].split("&&")[0]
            packages |= {t for t in tail.split() if not t.startswith("-") and "=" not in t}
    return packages


SANITIZER_RUNTIME = re.compile(r"lib(asan|ubsan|tsan|lsan|hwasan)\.so")


def needed_packages(binary):
    """{package: [libraries]} for the Debian packages binary loads, and the
    libraries that belong to no package (the project's own)."""
    ldd = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    # The image builds the release preset; a sanitizer build of the tree under
    # test (the asan preset) links sanitizer runtimes the image never needs.
    paths = [p for p in re.findall(r"=> (/\S+)", ldd) if not SANITIZER_RUNTIME.match(os.path.basename(p))]
    # One dpkg -S for every path and its resolved target (dpkg knows the
    # file under the name its package installed).
    queries = sorted(set(paths) | {os.path.realpath(p) for p in paths})
    out = subprocess.run(["dpkg", "-S"] + queries, capture_output=True, text=True).stdout
    owner_of = {}
    for line in out.splitlines():
        pkg, _, path = line.partition(": ")
        owner_of[path.strip()] = pkg.split(":")[0]
    packages, own = {}, []
    for path in paths:
        owner = owner_of.get(path) or owner_of.get(os.path.realpath(path))
        if owner is None:
            own.append(os.path.basename(path))
        else:
            packages.setdefault(owner, []).append(os.path.basename(path))
    return packages, own


def check(text, binaries):
    errors = []
    st = stages(instructions(text))
    if len(st) != 2:
        return [f"expected 2 stages, found {len(st)}"]
    build, runtime = st
    for s in st:
        if s["image"] != "debian:12":
            errors.append(f"stage {s['name']} is FROM {s['image']}, not debian:12")
    build_runs = " ".join(rest for word, rest in build["body"] if word == "RUN")
    if "scripts/common.sh" not in build_runs or "SPILL_DEB_PACKAGES" not in build_runs:
        errors.append("build stage does not install scripts/common.sh's SPILL_DEB_PACKAGES")
    if "--preset release" not in build_runs:
        errors.append("build stage does not configure the release preset")
    runtime_pkgs = installed_packages(runtime)
    for pkg in runtime_pkgs:
        if pkg.endswith("-dev") or pkg in ("cmake", "build-essential", "ninja-build", "g++"):
            errors.append(f"runtime stage installs build package {pkg}")
    copies = " ".join(rest for word, rest in runtime["body"] if word == "COPY")
    for binary in binaries:
        packages, own = needed_packages(binary)
        for pkg, libs in sorted(packages.items()):
            if pkg not in runtime_pkgs and pkg not in BASE:
                errors.append(f"{os.path.basename(binary)} needs {', '.join(libs)} from {pkg}, "
                              "which the runtime stage does not install")
        for lib in own:
            stem = lib.split(".so")[0]
            if f"--from={build['name']}" not in copies or stem not in copies:
                errors.append(f"{os.path.basename(binary)} needs {lib}, not copied from the build stage")
        if os.path.basename(binary) not in copies:
            errors.append(f"runtime stage does not copy {os.path.basename(binary)}")
    users = [rest for word, rest in runtime["body"] if word == "USER"]
    if not users or users[-1].split(":")[0] in ("root", "0"):
        errors.append("runtime stage does not switch to a non-root USER")
    elif not users[-1].endswith(":spill"):
        errors.append(f"runtime USER {users[-1]} is not in group spill")
    runs = " ".join(rest for word, rest in runtime["body"] if word == "RUN")
    if not re.search(r"groupadd\b.*\bspill\b", runs):
        errors.append("runtime stage does not create group spill")
    entry = [rest for word, rest in runtime["body"] if word == "ENTRYPOINT"]
    if not entry or "spilld" not in entry[-1]:
        errors.append("ENTRYPOINT is not spilld")
    return errors


def main():
    binaries = sys.argv[1:]
    with open(os.path.join(HERE, "Dockerfile"), encoding="utf-8") as f:
        text = f.read()
    errors = check(text, binaries)
    for e in errors:
        print(f"FAIL: {e}")
    broken = text.replace("      libgrpc++1.51 \\\n", "")
    if broken == text or not any("libgrpc++1.51" in e for e in check(broken, binaries)):
        print("FAIL: a runtime stage without libgrpc++1.51 was not caught")
        errors.append("self-check")
    if errors:
        return 1
    print("Dockerfile OK: stages, runtime libraries of " +
          ", ".join(os.path.basename(b) for b in binaries) + ", user, entrypoint")
    return 0


if __name__ == "__main__":
    sys.exit(main())
