"""gpu_check.py's command line: its options and the --sections list."""

import argparse
from pathlib import Path

from gpucheck.sections import SECTION_NAMES, SECTIONS

DEFAULT_BUDGET_S = 480.0


def parse_sections(text: str) -> list[str]:
    if text == "all":
        return list(SECTION_NAMES)
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in SECTION_NAMES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown section {', '.join(map(repr, unknown)) or repr(text)}: choose from {', '.join(SECTION_NAMES)} or all"
        )
    return [name for name in SECTION_NAMES if name in names]  # always in the canonical order


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="gpu_check.py",
        description="Prove the GPU path (sections below, in order) and write OUT/report.json and OUT/report.md.",
        epilog="sections: " + "; ".join(f"{s.name} ({s.title})" for s in SECTIONS),
    )
    parser.add_argument(
        "--out", type=Path, default=Path("gpu-report"), help="report folder (default: gpu-report)"
    )
    parser.add_argument("--sections", type=parse_sections, default=list(SECTION_NAMES),
                        help=f"comma-separated, from {','.join(SECTION_NAMES)} (default: all)")  # fmt: skip
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu with --tiny")
    parser.add_argument("--tiny", action="store_true", help="tiny models: the plumbing in seconds (CPU, CI)")
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S,
                        help=f"seconds for all six sections, each its share (default: {DEFAULT_BUDGET_S:g})")  # fmt: skip
    parser.add_argument(
        "--work", type=Path, default=None, help="folder for runs and caches (default: a temp dir, removed)"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print each section's commands and run nothing"
    )
    parser.add_argument("--fail-section", choices=SECTION_NAMES, default=None,
                        help="for the tests: a command that exits 1 runs first in this section")  # fmt: skip
    args = parser.parse_args(argv)
    if args.budget <= 0:
        parser.error("--budget must be positive")
    if args.device.startswith("cpu") and not args.tiny and not args.dry_run:
        parser.error("--device cpu runs only with --tiny (the GPU shapes would take hours on a CPU)")
    return args
