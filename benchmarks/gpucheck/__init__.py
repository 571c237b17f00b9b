"""The pieces of `benchmarks/gpu_check.py` (`make gpu-check`), one job each.

    base            Context, Step, Section and the errors a check raises
    outputs         reading what the commands print and write (JSON lines, metrics.jsonl)
    env, gpu_tests, cli, train_bench, generate_bench, shakespeare
                    one section each: its commands, the checks that read their output, its summary
    sections        the six sections in order, with their budgets
    targets         the targets, reported beside the figures (never a failure)
    runner          running a section's steps as subprocesses, each with a deadline
    report          report.json and report.md
    options         the command line

Standard library only: the check runs on a bare GPU machine before anything is installed. It is
imported as a sibling of gpu_check.py (`from gpucheck import ...`), as Python finds it when the
script runs by path.
"""
