#!/usr/bin/env python3
"""Checks deploy/kubernetes: every manifest loads, and the fields that decide
whether spilld runs and training pods reach it are right. Then it breaks a
copy of the manifests in several ways and checks each break is caught.

usage: manifests_test.py SPILLD   (the built spilld, for --validate)
"""
import copy
import json
import os
import re
import subprocess
import sys
import tempfile

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
SIZE_UNITS = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
              "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "m": 1e-3}
SPILLD_SIZE = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40,
               "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}


def quantity(text):
    m = re.fullmatch(r"([0-9.]+(?:e[0-9]+)?)([A-Za-z]*)", str(text))
    if not m or m.group(2) not in SIZE_UNITS:
        raise ValueError(f"not a Kubernetes quantity: {text!r}")
    return float(m.group(1)) * SIZE_UNITS[m.group(2)]


def spilld_size(text):
    m = re.fullmatch(r"([0-9]+)\s*([A-Za-z]*)", str(text))
    return int(m.group(1)) * SPILLD_SIZE[m.group(2) or "B"]


def load_all():
    docs = []
    for root, _, files in os.walk(HERE):
        for name in sorted(files):
            if name.endswith((".yaml", ".yml")):
                with open(os.path.join(root, name), encoding="utf-8") as f:
                    for doc in yaml.safe_load_all(f):
                        if doc is not None:
                            docs.append((os.path.relpath(os.path.join(root, name), HERE), doc))
    return docs


def find(docs, kind, name=None):
    return [d for _, d in docs if d.get("kind") == kind and
            (name is None or d["metadata"]["name"] == name)]


def check_all(docs, spilld):
    errors = []

    def need(cond, msg):
        if not cond:
            errors.append(msg)
        return cond

    for path, doc in docs:
        if doc.get("kind") == "Kustomization":
            listed = set(doc.get("resources", []))
            top = {p for p, d in docs if "/" not in p and d.get("kind") != "Kustomization"}
            need(listed == top, f"{path} lists {sorted(listed)}, not {sorted(top)}")
            continue
        need(all(k in doc for k in ("apiVersion", "kind", "metadata")) and
             doc["metadata"].get("name"), f"{path}: lacks apiVersion, kind or metadata.name")
    kinds = {d["kind"] for _, d in docs if d.get("kind")}
    for kind in ("Namespace", "ServiceAccount", "ConfigMap", "DaemonSet", "Job"):
        need(kind in kinds, f"no {kind} manifest")
    ds_list = find(docs, "DaemonSet", "spilld")
    if not need(len(ds_list) == 1, "expected one DaemonSet named spilld"):
        return errors
    ds = ds_list[0]
    ns = ds["metadata"].get("namespace")
    need(find(docs, "Namespace", ns), f"namespace {ns} is not defined")
    spec = ds["spec"]
    pod = spec["template"]["spec"]
    need(spec.get("updateStrategy", {}).get("type") in ("OnDelete", "RollingUpdate"),
         "DaemonSet has no updateStrategy")
    need(spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items(),
         "selector does not match the pod labels")
    need(pod.get("priorityClassName") == "system-node-critical",
         "priorityClassName is not system-node-critical")
    sa = pod.get("serviceAccountName")
    need(any(d["metadata"].get("namespace") == ns for d in find(docs, "ServiceAccount", sa)),
         f"ServiceAccount {sa} is not defined in {ns}")
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"]
    need(any(e["key"] == "nvidia.com/gpu.present" for t in terms for e in t["matchExpressions"]),
         "not pinned to GPU nodes (nvidia.com/gpu.present)")
    need(any(t.get("key") == "nvidia.com/gpu" for t in pod.get("tolerations", [])),
         "no toleration for the nvidia.com/gpu taint")

    # seccomp: a Localhost profile whose file is here and allows io_uring.
    seccomp = pod.get("securityContext", {}).get("seccompProfile", {})
    need(seccomp.get("type") == "Localhost", "seccompProfile is not Localhost")
    profile_path = os.path.join(HERE, "seccomp", os.path.basename(seccomp.get("localhostProfile", "")))
    if need(os.path.isfile(profile_path), f"seccomp profile {profile_path} does not exist"):
        with open(profile_path, encoding="utf-8") as f:
            profile = json.load(f)
        allowed = {n for rule in profile["syscalls"] if rule["action"] == "SCMP_ACT_ALLOW"
                   for n in rule["names"]}
        need(profile["defaultAction"] in ("SCMP_ACT_ERRNO", "SCMP_ACT_KILL_PROCESS"),
             "seccomp profile does not deny by default")
        for call in ("io_uring_setup", "io_uring_enter", "io_uring_register", "mlock",
                     "memfd_create", "mmap", "sendmsg", "recvmsg", "execve"):
            need(call in allowed, f"seccomp profile does not allow {call}")
        for call in ("kexec_load", "init_module", "reboot", "bpf"):
            need(call not in allowed, f"seccomp profile allows {call}")

    containers = pod["containers"]
    if not need(len(containers) == 1, "spilld pod should have one container"):
        return errors
    c = containers[0]
    sc = c.get("securityContext", {})
    caps = sc.get("capabilities", {})
    need(caps.get("drop") == ["ALL"], "capabilities do not drop ALL")
    need(caps.get("add") == ["IPC_LOCK"], f"capabilities add {caps.get('add')}, not only IPC_LOCK")
    need(sc.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation is not false")
    need(not sc.get("privileged"), "container is privileged")

    # The config: valid for spilld itself, and its socket in the shared dir.
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    cm_volume = [v for v in volumes.values() if "configMap" in v]
    config = None
    if need(cm_volume, "no ConfigMap volume"):
        cm_name = cm_volume[0]["configMap"]["name"]
        cms = [d for d in find(docs, "ConfigMap", cm_name) if d["metadata"].get("namespace") == ns]
        if need(cms and "spilld.json" in cms[0].get("data", {}),
                f"ConfigMap {cm_name} with spilld.json not found in {ns}"):
            text = cms[0]["data"]["spilld.json"]
            try:
                config = json.loads(text)
            except ValueError as e:
                need(False, f"spilld.json is not JSON: {e}")
            if config is not None:
                with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
                    f.write(text)
                run = subprocess.run([spilld, "--validate", f"--config={f.name}"],
                                     capture_output=True, text=True)
                os.unlink(f.name)
                need(run.returncode == 0, f"spilld --validate rejects the ConfigMap: {run.stdout}"
                     f"{run.stderr}")
                conf_mount = [p for p, n in mounts.items() if volumes[n].get("configMap")]
                need(any(a.startswith("--config=" + p + "/spilld.json") for p in conf_mount
                         for a in c.get("args", [])), "--config does not point at the ConfigMap mount")
    socket = config.get("socket", "") if config else ""
    socket_dir = os.path.dirname(socket)
    host_socket_dir = None
    if need(socket_dir in mounts, f"socket directory {socket_dir} is not mounted"):
        host_socket_dir = volumes[mounts[socket_dir]].get("hostPath", {}).get("path")
        need(host_socket_dir is not None, "socket directory is not a hostPath")
    need(any(volumes[n].get("hostPath") and "nvme" in p for p, n in mounts.items()),
         "no hostPath mount for the NVMe directory")

    # Probes run spillctl health on the configured socket.
    for probe in ("readinessProbe", "livenessProbe"):
        cmd = c.get(probe, {}).get("exec", {}).get("command", [])
        need(cmd[:1] == ["spillctl"] and "health" in cmd and f"--socket={socket}" in cmd,
             f"{probe} does not run spillctl health on {socket}: {cmd}")

    # Resources: limits >= requests; the pool's backing covers pinned_bytes.
    res = c.get("resources", {})
    req, lim = res.get("requests", {}), res.get("limits", {})
    for key, value in req.items():
        need(key in lim and quantity(lim[key]) >= quantity(value),
             f"limit for {key} is below its request")
    need(req.get("hugepages-2Mi") == lim.get("hugepages-2Mi") and "hugepages-2Mi" in lim,
         "hugepages-2Mi must be requested and limited equally")
    need(any(volumes[n].get("emptyDir", {}).get("medium") == "HugePages-2Mi" for n in mounts.values()),
         "no HugePages-2Mi volume mounted")
    if config and "memory" in lim:
        pool = spilld_size(config.get("pinned_bytes", "0"))
        backing = "hugepages-2Mi" if config.get("huge_pages") == "on" else "memory"
        need(backing in lim and quantity(lim[backing]) >= pool,
             f"{backing} limit does not cover pinned_bytes {config.get('pinned_bytes')}")

    # The training job reaches the same socket.
    for job in find(docs, "Job"):
        jpod = job["spec"]["template"]["spec"]
        jvol = {v["name"]: v for v in jpod["volumes"]}
        for jc in jpod["containers"]:
            jm = {m["mountPath"]: m["name"] for m in jc["volumeMounts"]}
            env = {e["name"]: e.get("value") for e in jc.get("env", [])}
            need(env.get("SPILL_SOCKET") == socket, f"job SPILL_SOCKET {env.get('SPILL_SOCKET')} "
                 f"is not spilld's socket {socket}")
            need(socket_dir in jm and jvol[jm[socket_dir]].get("hostPath", {}).get("path") ==
                 host_socket_dir, "job does not mount spilld's socket directory from the host")
            argv = jc.get("command", []) + jc.get("args", [])
            need(argv[:1] == ["torchrun"] and "--no-python" in argv and "spill-train" in argv,
                 f"job does not run torchrun --no-python spill-train: {argv}")
            if need("--deepspeed" in argv, "job passes no --deepspeed config"):
                ds_path = argv[argv.index("--deepspeed") + 1]
                ds_dir, ds_key = os.path.split(ds_path)
                vol = jvol.get(jm.get(ds_dir, ""), {})
                cm = find(docs, "ConfigMap", vol.get("configMap", {}).get("name"))
                if need(cm and ds_key in cm[0].get("data", {}), f"{ds_path} is not a ConfigMap key"):
                    try:
                        ds = json.loads(cm[0]["data"][ds_key])
                        need(ds.get("zero_optimization", {}).get("stage") == 3,
                             "ds_config is not ZeRO stage 3")
                    except ValueError as e:
                        need(False, f"{ds_path} is not JSON: {e}")
        groups = jpod.get("securityContext", {}).get("supplementalGroups", [])
        need(pod["securityContext"].get("runAsGroup") in groups,
             "job pods are not in spilld's socket group")
    return errors


def mutations():
    """(description, function breaking the docs in place)."""
    def ds(docs):
        return find(docs, "DaemonSet", "spilld")[0]["spec"]["template"]["spec"]

    def config(docs, key, value):
        cm = find(docs, "ConfigMap", "spilld-config")[0]
        conf = json.loads(cm["data"]["spilld.json"])
        conf[key] = value
        cm["data"]["spilld.json"] = json.dumps(conf)

    return [
        ("IPC_LOCK removed", lambda d: ds(d)["containers"][0]["securityContext"]["capabilities"]
         .update(add=[])),
        ("SYS_ADMIN added", lambda d: ds(d)["containers"][0]["securityContext"]["capabilities"]
         .update(add=["IPC_LOCK", "SYS_ADMIN"])),
        ("unknown config key", lambda d: config(d, "colour", "red")),
        ("pool larger than hugepages", lambda d: config(d, "pinned_bytes", "64GiB")),
        ("socket moved", lambda d: config(d, "socket", "/var/run/other/spilld.sock")),
        ("limit below request", lambda d: ds(d)["containers"][0]["resources"]["limits"]
         .update(cpu="1")),
        ("no priority class", lambda d: ds(d).pop("priorityClassName")),
        ("missing seccomp file", lambda d: ds(d)["securityContext"]["seccompProfile"]
         .update(localhostProfile="spill/nope.json")),
        ("liveness probe dropped", lambda d: ds(d)["containers"][0].pop("livenessProbe")),
        ("job socket host path differs", lambda d: [
            v["hostPath"].update(path="/run/elsewhere") for v in
            find(d, "Job")[0]["spec"]["template"]["spec"]["volumes"] if "hostPath" in v]),
    ]


def main():
    spilld = sys.argv[1]
    docs = [doc for _, doc in load_all()]
    named = load_all()
    errors = check_all(named, spilld)
    for e in errors:
        print(f"FAIL: {e}")
    for what, breaks in mutations():
        broken = copy.deepcopy(named)
        breaks(broken)
        if not check_all(broken, spilld):
            print(f"FAIL: the check missed a broken manifest: {what}")
            errors.append(what)
    if errors:
        return 1
    print(f"{len(docs)} manifests OK; {len(mutations())} broken variants caught")
    return 0


if __name__ == "__main__":
    sys.exit(main())
