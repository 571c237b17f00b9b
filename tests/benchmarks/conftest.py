"""benchmarks/ on sys.path, as it is for a script there run by path: gpu_check.py imports its sibling
package gpucheck/, bench_tokenizer.py tokbench/, bench_generate.py bench_train.py."""

import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))
