#!/usr/bin/env python3
"""Regenerate oraclewad/_proto from proto/ (run via `make proto`; commit the result).

protoc names modules after the proto path (`oraclewa.v1.control_pb2`); the generated gRPC
module imports its messages that way. We generate under oraclewad/_proto/ and rewrite that
import to `oraclewad._proto.oraclewa.v1`, so the code is importable as a normal subpackage
without touching sys.path. `--out DIR` writes elsewhere (the staleness test compares bytes).
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
PROTOS = ("oraclewa/v1/control.proto",)
PACKAGE = "oraclewad._proto"
PACKAGE_INIT = '"""Generated gRPC code; regenerate with `make proto` (scripts/gen_proto.py)."""\n'


def generate(out: Path) -> list[Path]:
    """Write the generated modules (and their package __init__ files) under `out`."""
    out.mkdir(parents=True, exist_ok=True)
    well_known = resources.files("grpc_tools") / "_proto"
    args = ["grpc_tools.protoc", f"-I{PROTO_ROOT}", f"-I{well_known}",
            f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}", *PROTOS]
    if protoc.main(args) != 0:
        raise SystemExit(f"protoc failed: {' '.join(args)}")
    written = []
    for proto in PROTOS:
        pkg_dir = out / Path(proto).parent
        module = Path(proto).stem
        proto_pkg = ".".join(Path(proto).parent.parts)          # oraclewa.v1
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"):
            path = pkg_dir / f"{module}{suffix}"
            text = path.read_text()
            text = text.replace(f"from {proto_pkg} import", f"from {PACKAGE}.{proto_pkg} import")
            path.write_text(text)
            written.append(path)
        # Every directory from out down to the module is a package (always rewritten: deterministic).
        rel = pkg_dir.relative_to(out)
        for depth in range(len(rel.parts) + 1):
            init_file = out.joinpath(*rel.parts[:depth], "__init__.py")
            init_file.write_text(PACKAGE_INIT)
            written.append(init_file)
    return sorted(set(written))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "oraclewad" / "_proto",
                        help="output directory (default: oraclewad/_proto)")
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
