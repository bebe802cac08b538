"""Show versions, devices and kernel backends: what to paste into a bug report.

Example:
    moekit info
    moekit info --json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from importlib import metadata
from typing import Any

from moekit._deps import install_hint, is_installed

HELP = "show versions of moekit and its dependencies, devices, and available kernel backends"

_PACKAGES = ("numpy", "scipy", "scikit-learn", "torch", "triton", "transformers",
             "matplotlib", "safetensors")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object instead of text")


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _devices() -> dict[str, Any]:
    out: dict[str, Any] = {"cpu_count": os.cpu_count(), "torch_threads": None, "cuda": []}
    try:
        import torch
    except ImportError:
        out["note"] = "torch is not installed"
        return out
    out["torch_threads"] = torch.get_num_threads()
    out["cuda_available"] = torch.cuda.is_available()
    out["cuda_version"] = torch.version.cuda
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            out["cuda"].append({"index": i, "name": props.name,
                                "memory_gib": round(props.total_memory / 2**30, 1),
                                "capability": f"{props.major}.{props.minor}"})
    mps = getattr(torch.backends, "mps", None)
    out["mps_available"] = bool(mps is not None and mps.is_available())
    return out


def _backends() -> dict[str, Any]:
    """name -> None (available) or the reason it is not; a note when torch is not installed."""
    if not is_installed("torch"):
        return {"_note": f"no kernel backends without torch ({install_hint(['torch'])})"}
    from moekit.kernels import available_backends

    return dict(available_backends())


def collect() -> dict[str, Any]:
    """Everything ``moekit info`` shows, as a JSON-ready dict."""
    from moekit import __version__

    return {
        "moekit": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": {name: _version(name) for name in _PACKAGES},
        "devices": _devices(),
        "kernel_backends": _backends(),
    }


def _text(info: dict[str, Any]) -> str:
    lines = [f"moekit        {info['moekit']}", f"python        {info['python']}",
             f"platform      {info['platform']}", "", "packages:"]
    for name, ver in info["packages"].items():
        lines.append(f"  {name:<13}{ver or 'not installed'}")
    dev = info["devices"]
    lines += ["", "devices:", f"  cpu cores    {dev['cpu_count']}"]
    if dev.get("note"):
        lines.append(f"  {dev['note']}")
    else:
        lines.append(f"  threads      {dev['torch_threads']} (torch)")
        if dev["cuda"]:
            for d in dev["cuda"]:
                lines.append(f"  cuda:{d['index']}       {d['name']}, {d['memory_gib']} GiB, "
                             f"compute capability {d['capability']}")
        else:
            lines.append(f"  cuda         none (torch CUDA build: {dev['cuda_version'] or 'no'})")
        if dev.get("mps_available"):
            lines.append("  mps          available")
    lines += ["", "kernel backends:"]
    for name, reason in info["kernel_backends"].items():
        if name == "_note":
            lines.append(f"  ({reason})")
        else:
            lines.append(f"  {name:<13}{'available' if reason is None else 'unavailable: ' + str(reason)}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    info = collect()
    print(json.dumps(info, indent=2) if args.json else _text(info))
    return 0
