"""The six sections, in the order they run, each with its budget (its share of --budget)."""

from gpucheck.base import Section
from gpucheck.cli import cli_steps, cli_summary
from gpucheck.env import env_steps, env_summary
from gpucheck.generate_bench import generate_bench_steps, generate_bench_summary
from gpucheck.gpu_tests import tests_steps, tests_summary
from gpucheck.shakespeare import TARGET_LOSS, shakespeare_steps, shakespeare_summary
from gpucheck.train_bench import train_bench_steps, train_bench_summary

# budgets: guesses for one H100/H200 (not yet measured), mostly torch.compile's compilations
SECTIONS = [
    Section("env", "environment", 15, env_steps, env_summary),
    Section("tests", "CUDA correctness tests (tests/gpu)", 85, tests_steps, tests_summary),
    Section("cli", "CLI end to end: train, resume, generate --compile", 55, cli_steps, cli_summary),
    Section("train-bench", "training speed, GPT-2 124M (bench_train.py --gpt2)", 115, train_bench_steps, train_bench_summary),
    Section("generate-bench", "generation speed (bench_generate.py)", 110, generate_bench_steps, generate_bench_summary),
    Section("shakespeare", f"shakespeare-char preset to val <= {TARGET_LOSS}", 100, shakespeare_steps, shakespeare_summary),
]  # fmt: skip
SECTION_NAMES = [s.name for s in SECTIONS]
