"""Init container of the resnet-serve chart (weights.source=url): download a weights file.

Writes to DEST through a temporary file, so the server never sees half a file, and
checks the SHA-256 when one is given. Standard library only.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
import urllib.request

CHUNK = 1 << 20


def fetch(url: str, dest: str, sha256: str = "", attempts: int = 3, timeout: float = 60.0) -> str:
    """Download ``url`` to ``dest``; return the hex SHA-256 of what was written."""
    os.makedirs(os.path.dirname(dest) or ".", exist_ok=True)
    tmp = dest + ".part"
    last_error: Exception | None = None
    for attempt in range(1, attempts + 1):
        try:
            digest = hashlib.sha256()
            size = 0
            with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:
                while chunk := response.read(CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
            got = digest.hexdigest()
            if sha256 and got != sha256.lower():
                os.remove(tmp)
                raise SystemExit(f"sha256 mismatch for {url}: expected {sha256.lower()}, got {got}")
            os.replace(tmp, dest)
            print(f"fetched {url} -> {dest} ({size} bytes, sha256 {got})", flush=True)
            return got
        except OSError as exc:  # network errors, HTTP errors (URLError is an OSError)
            last_error = exc
            print(f"attempt {attempt}/{attempts} failed: {exc}", file=sys.stderr, flush=True)
            if attempt < attempts:
                time.sleep(2 * attempt)
    raise SystemExit(f"could not fetch {url}: {last_error}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--dest", required=True)
    parser.add_argument("--sha256", default="")
    parser.add_argument("--attempts", type=int, default=3)
    args = parser.parse_args(argv)
    fetch(args.url, args.dest, args.sha256, args.attempts)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
