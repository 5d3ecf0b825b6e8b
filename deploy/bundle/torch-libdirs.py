"""Prints the directories holding the shared libraries of this Python's torch
package, ':'-separated: torch/lib, then each nvidia/*/lib of the wheel's CUDA,
NCCL and cuDNN packages beside it. Finds the package without importing it
(importing torch takes seconds). Exit status 1 when torch is not installed.
Used by the Spill bundle's env.sh and deploy/make-bundle.sh.
"""
import glob
import importlib.util
import os
import sys

spec = importlib.util.find_spec("torch")
if spec is None or not spec.submodule_search_locations:
    sys.exit(1)
torch_dir = list(spec.submodule_search_locations)[0]
dirs = [os.path.join(torch_dir, "lib")]
dirs += sorted(glob.glob(os.path.join(os.path.dirname(torch_dir), "nvidia", "*", "lib")))
print(":".join(os.path.realpath(d) for d in dirs if os.path.isdir(d)))
