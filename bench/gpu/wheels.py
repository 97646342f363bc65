"""The packages the GPU machine lacks: fetched here as wheels (`make gpu-wheels`), installed there into
bench/cache with ``pip --no-index --target`` (the machine is offline)."""

from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from bench.gpu import REPO

WHEELS = REPO / "bench" / "wheels"
# What the GPU machine lacks, as (distribution, module); their other needs (numpy, packaging,
# typing_extensions, pyyaml) are there.
PACKAGES = (("zarr", "zarr"), ("numcodecs", "numcodecs"), ("highspy", "highspy"), ("donfig", "donfig"),
            ("google-crc32c", "google_crc32c"))
WHEEL_PYTHON = "3.12"
# Tags that pip matches one by one (manylinux_2_N for each N a wheel may name).
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64",
             "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64")


def download_wheels(dest: Path) -> int:
    """`make gpu-wheels`: cp312 manylinux wheels of PACKAGES, pinned to the versions installed here
    (the ones the tests ran with) where they are installed."""
    from importlib import metadata

    reqs = []
    for dist, _ in PACKAGES:
        try:
            reqs.append(f"{dist}=={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            reqs.append(dist)
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("*.whl"):  # one version of each: two would stop the install there
        old.unlink()
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--no-deps",
           "--only-binary=:all:", "--python-version", WHEEL_PYTHON, "--implementation", "cp", "-d", str(dest)]
    for plat in PLATFORMS:
        cmd += ["--platform", plat]
    rc = subprocess.call(cmd + reqs)
    wheels = sorted(dest.glob("*.whl"))
    size = sum(w.stat().st_size for w in wheels) / 2**20
    print(f"gpu-wheels: {len(wheels)} wheels ({size:.1f} MiB) in {dest}: {', '.join(w.name for w in wheels)}")
    return rc


def ensure_packages() -> str:
    """Install the carried wheels when a needed module is missing; put them and the repo on the path
    of this process and of the processes it starts."""
    paths = [str(REPO)]
    missing = [mod for _, mod in PACKAGES if importlib.util.find_spec(mod) is None]
    note = "all present"
    if missing:
        wheels = sorted(WHEELS.glob("*.whl"))
        if not wheels:
            note = f"missing {', '.join(missing)} and no wheels in {WHEELS} (run `make gpu-wheels` and carry it)"
        else:
            site = REPO / "bench" / "cache" / f"site-py{sys.version_info.major}{sys.version_info.minor}"
            subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                                   "--no-index", "--no-deps", "--no-compile", "--upgrade", "--target", str(site),
                                   *map(str, wheels)])
            paths.insert(0, str(site))
            note = f"installed {len(wheels)} wheels into {site}"
    for p in reversed(paths):
        if p not in sys.path:
            sys.path.insert(0, p)
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(paths + ([old] if old else []))
    importlib.invalidate_caches()
    return note
