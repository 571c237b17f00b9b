"""benchmarks/gpu_check.py (`make gpu-check`) on CPU: its options, the GPU commands it builds, the
checks that read each section's output, and a real --tiny run with a failing section (the report
records it, with its last lines, and the next sections still run)."""

import importlib.util
import json
import shutil
import subprocess
import sys

import gpu_check  # benchmarks/ is on sys.path (conftest.py), as when the script runs by path
import pytest
import typer
from gpucheck.base import SONNETS, CheckFailed, Context, StepRun
from gpucheck.cli import cli_steps, cli_summary
from gpucheck.env import ENV_SCRIPT, env_steps, env_summary
from gpucheck.generate_bench import generate_bench_steps
from gpucheck.gpu_tests import pytest_counts
from gpucheck.options import DEFAULT_BUDGET_S, parse_sections
from gpucheck.outputs import last_json, stop_reason
from gpucheck.report import benchmark_tables
from gpucheck.sections import SECTION_NAMES, SECTIONS
from gpucheck.shakespeare import shakespeare_steps
from gpucheck.targets import targets
from gpucheck.train_bench import train_bench_steps

from gptcli.cli import app
from tests.conftest import REPO, run_cli

SCRIPT = REPO / "benchmarks" / "gpu_check.py"


def load(name: str, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def script(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


# ---------------------------------------------------------------------------------------------
# the command line


def test_help_names_every_section_and_the_script_needs_no_torch():
    done = script("--help")
    assert done.returncode == 0, done.stderr
    for name in SECTION_NAMES:
        assert name in done.stdout
    code = "import sys; sys.path.insert(0, 'benchmarks'); import gpu_check; print('torch' in sys.modules)"
    check = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert check.stdout.strip() == "False", check.stderr


def test_an_unknown_section_is_a_usage_error_that_lists_the_sections():
    done = script("--sections", "env,gpu-burn")
    assert done.returncode == 2 and done.stdout == ""
    assert "unknown section 'gpu-burn'" in done.stderr
    assert "env, tests, cli, train-bench, generate-bench, shakespeare or all" in done.stderr


def test_sections_run_in_their_own_order_whatever_the_order_given():
    assert parse_sections("shakespeare,env") == ["env", "shakespeare"]
    assert parse_sections("all") == SECTION_NAMES


def test_a_cpu_run_needs_tiny(capsys):
    with pytest.raises(SystemExit) as e:
        gpu_check.main(["--device", "cpu"])
    assert e.value.code == 2 and "--tiny" in capsys.readouterr().err


@pytest.fixture
def shakespeare(monkeypatch):
    """toy_data/shakespeare.txt is not committed (make data): the sonnets stand in for it."""
    monkeypatch.setattr("gpucheck.shakespeare.SHAKESPEARE", SONNETS)


def test_dry_run_prints_the_gpu_commands_and_writes_nothing(tmp_path, capsys, shakespeare):
    assert gpu_check.main(["--dry-run", "--out", str(tmp_path / "report")]) == 0
    out = capsys.readouterr().out
    assert not (tmp_path / "report").exists()
    for fragment in (
        "-m pytest tests/gpu",
        "-m gptcli train --tokenizer char --data",
        "--device cuda --max-iters 60",
        "-m gptcli train --resume WORK/cli-run --max-iters 90",
        "-m gptcli generate --checkpoint WORK/cli-run --device cuda --compile --max-new-tokens 50 --json",
        "bench_train.py --device cuda --gpt2 --sweep 16,24,32 --sweep-budget",
        "bench_generate.py --device cuda --batches 1,8,64 --json",
        "-m gptcli train --config shakespeare-char --data",
        "--device cuda --target-loss 1.47 --out WORK/shakespeare --compile --max-time",
    ):
        assert fragment in out, fragment
    budgets = [
        float(line.rsplit("(budget ", 1)[1].split()[0]) for line in out.splitlines() if "(budget" in line
    ]
    assert sum(budgets) == pytest.approx(DEFAULT_BUDGET_S, abs=3)


def options_of(command: str) -> set[str]:
    click_command = typer.main.get_command(app).commands[command]
    return {opt for param in click_command.params for opt in (*param.opts, *param.secondary_opts)}


@pytest.mark.parametrize("tiny", [False, True], ids=["gpu", "tiny"])
def test_the_gpt_commands_use_only_options_gpt_has(tiny, tmp_path, shakespeare):
    ctx = Context("cpu" if tiny else "cuda", tiny, tmp_path)
    commands = [step.argv for s in SECTIONS for step in s.steps(ctx, 100.0)]
    gpt = [argv[3:] for argv in commands if argv[1:3] == ["-m", "gptcli"]]
    assert {argv[0] for argv in gpt} == {"train", "generate"} and len(gpt) == 4
    for command, *args in gpt:
        unknown = {a for a in args if a.startswith("--")} - options_of(command)
        assert not unknown, (command, unknown)


def test_without_the_shakespeare_corpus_that_section_fails_saying_so(tmp_path, monkeypatch):
    monkeypatch.setattr("gpucheck.shakespeare.SHAKESPEARE", tmp_path / "toy_data" / "shakespeare.txt")
    monkeypatch.setattr("gpucheck.shakespeare.REPO", tmp_path)
    (step,) = shakespeare_steps(Context("cuda", False, tmp_path), 100.0)
    done = subprocess.run(step.argv, capture_output=True, text=True)
    assert done.returncode == 1 and "toy_data/shakespeare.txt is missing: run `make data`" in done.stderr


def test_the_bench_scripts_take_the_options_it_passes(tmp_path, monkeypatch, capsys):
    ctx = Context("cuda", False, tmp_path)
    for section in ("train-bench", "generate-bench"):
        (step,) = next(s for s in SECTIONS if s.name == section).steps(ctx, 100.0)
        bench = load(f"bench_{section}", step.argv[1])
        monkeypatch.setattr(sys, "argv", [step.argv[1], "--help"])
        with pytest.raises(SystemExit):
            bench.main()
        usage = capsys.readouterr().out
        for flag in (a for a in step.argv[2:] if a.startswith("--")):
            assert flag in usage, (section, flag)


# ---------------------------------------------------------------------------------------------
# reading outputs


def test_the_env_script_reports_torch_the_packages_and_no_gpu_here(capsys):
    exec(ENV_SCRIPT, {})  # what the env section runs in a subprocess; torch is loaded already
    run = StepRun(capsys.readouterr().out, 1.0)
    (cpu_step,) = env_steps(Context("cpu", True, REPO), 100.0)
    info = cpu_step.check(run)
    assert info["cuda_available"] is False and info["packages"]["pydantic"] and "gptcli_error" not in info
    assert env_summary(info).endswith("no GPU, bf16 False")
    (cuda_step,) = env_steps(Context("cuda", False, REPO), 100.0)
    with pytest.raises(CheckFailed, match="torch sees no CUDA GPU"):
        cuda_step.check(run)


def test_pytest_counts_read_the_summary_line():
    assert pytest_counts("x\n3 passed, 1 skipped, 2 warnings in 4.20s\n") == dict(
        passed=3, failed=0, skipped=1, errors=0
    )
    assert pytest_counts("== 1 failed, 9 passed, 1 error in 61.0s ==")["errors"] == 1
    assert pytest_counts("SKIPPED [1] tests/gpu/x.py:1: no GPU in here")["skipped"] == 0


def test_last_json_takes_the_last_json_object_line():
    assert last_json('{"a": 1}\nnoise\n{"b": 2}\n[1, 2]\n{broken\nwarning: x\n') == {"b": 2}
    with pytest.raises(CheckFailed, match="no JSON"):
        last_json("no json here")


def test_stop_reason_reads_the_summary_line():
    assert stop_reason("x\ndone (stopped at --target-loss): 250 steps in 9s; ...") == "target_loss"
    assert stop_reason("done (stopped by --max-time): 7 steps") == "max_time"
    assert stop_reason("done: 90 steps in 3s; train 1.0: x") == "max_iters"
    assert stop_reason("error: no") is None


def test_the_cli_checks_read_a_real_train_resume_generate(tmp_path, monkeypatch):
    """The cli section's three commands, run in-process (torch is loaded already), then its checks."""
    import torch._dynamo

    monkeypatch.setenv("GPTCLI_CACHE_DIR", str(tmp_path / "cache"))
    ctx = Context("cpu", True, tmp_path)
    figures = {}
    # as --tiny does; config.patch restores it (monkeypatch's undo hid the setting from later compiles)
    with torch._dynamo.config.patch(debug_backend_override=">=0:eager"):
        for step in cli_steps(ctx, 100.0):
            result = run_cli(*step.argv[3:])
            assert result.exit_code == 0, result.stderr
            figures.update(step.check(StepRun(result.stderr + result.stdout, 1.0)))
    assert figures["train_steps"] == 6 and figures["resume_steps"] == 9 and figures["generate_tokens"] == 10
    assert "resumed to 9" in cli_summary(figures)
    with pytest.raises(CheckFailed, match="did not resume"):
        cli_steps(ctx, 100.0)[1].check(StepRun("training ...", 1.0))


BENCH_GENERATE = {  # the shape of bench_generate.py --json's line (its own file documents it)
    "device": "cuda",
    "shape": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50257),
    "read_bandwidth": 3.1e12,
    "bounds": {"bf16": {"weight_bytes": 325_000_000, "bound_tok_s": 9500.0}},
    "results": [
        dict(precision="bf16", batch=1, eager_tok_s=900.0, compiled_tok_s=3500.0, hf_tok_s=300.0,
             eager_vs_hf=3.0, compiled_vs_hf=11.7, bound_fraction=0.37),
        dict(precision="bf16", batch=64, eager_tok_s=30000.0, compiled_tok_s=45000.0, hf_tok_s=50000.0,
             eager_vs_hf=0.6, compiled_vs_hf=0.9),
    ],
}  # fmt: skip


def test_targets_sit_beside_the_figures_and_never_fail_a_section(tmp_path):
    (step,) = generate_bench_steps(Context("cuda", False, tmp_path), 100.0)
    figures = step.check(StepRun("progress...\n" + json.dumps(BENCH_GENERATE), 1.0))
    rows = targets({"generate-bench": {"figures": figures}}, tiny=False)
    met = {r["what"]: r["met"] for r in rows}
    assert met["decode tok/s, bf16, batch 1 (best of eager, compiled)"] is True
    assert met["decode tok/s, bf16, batch 64 (best of eager, compiled)"] is False
    assert met["compiled / HF generate, bf16 batch 64"] is False
    tiny = targets({"generate-bench": {"figures": figures}}, tiny=True)
    assert {r["met"] for r in tiny} == {None}
    failed = {name: {"figures": {}} for name in ("train-bench", "generate-bench", "shakespeare")}
    assert targets(failed, tiny=False) == []  # a failed section: no figures, no target rows


@pytest.mark.skipif(shutil.which("make") is None, reason="no make here")
def test_make_gpu_check_installs_the_wheels_and_runs_the_check_with_python3():
    done = subprocess.run(["make", "-n", "gpu-check", "gpu-wheels"], cwd=REPO, capture_output=True, text=True)
    out = " ".join(done.stdout.replace("\\\n", " ").split())
    assert done.returncode == 0, done.stderr
    assert "python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade" in out
    assert "--target /tmp/site .whl/*.whl" in out
    assert f"PYTHONPATH=/tmp/site:{REPO} python3 benchmarks/gpu_check.py --out gpu-report" in out
    assert "pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp" in out
    assert "--platform manylinux2014_x86_64" in out and "-d .whl pydantic==" in out


def test_bench_train_reports_the_batch_sweep_and_the_best_batch(monkeypatch, capsys):
    """bench_train.py in-process at the CPU shape: --sweep adds rows (ours alone) and a best one,
    and the train-bench check reads them."""
    bench = load("bench_train_for_gpu_check", REPO / "benchmarks" / "bench_train.py")
    argv = [
        "bench_train.py",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--sweep",
        "16",
        "--sweep-steps",
        "1",
        "--json",
    ]
    monkeypatch.setattr(sys, "argv", argv)
    bench.main()
    out = capsys.readouterr().out
    result = json.loads(out.strip().splitlines()[-1])
    assert [r["batch"] for r in result["sweep"]] == [16] and result["best"]["batch"] in (12, 16)
    (step,) = train_bench_steps(Context("cpu", True, REPO), 100.0)
    figures = step.check(StepRun(out, 1.0))
    assert figures["batch"] == 12 and figures["mfu"] is None and figures["sweep"][0]["batch"] == 16
    table = "\n".join(benchmark_tables([{"name": "train-bench", "figures": figures}]))
    assert "| 12 |" in table and "| 16 |" in table and "4 layers, 4 heads, 128 wide" in table


# ---------------------------------------------------------------------------------------------
# a real run


def test_a_tiny_run_records_a_failed_section_with_its_tail_and_runs_on(tmp_path):
    out = tmp_path / "report"
    done = script(
        "--device", "cpu", "--tiny", "--sections", "tests,shakespeare", "--fail-section", "tests",
        "--out", str(out), timeout=180,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    report = json.loads((out / "report.json").read_text())
    sections = {s["name"]: s for s in report["sections"]}
    assert list(sections) == ["tests", "shakespeare"]
    assert [s["status"] for s in sections.values()] == ["fail", "pass"]
    failed = sections["tests"]
    assert failed["note"] == "'simulated failure (--fail-section)' exited with 1"
    assert "a simulated failure" in failed["tail"] and failed["steps"][0]["exit_code"] == 1
    assert report["exit_code"] == 1 and report["tiny"] and report["device"] == "cpu"
    shakespeare = sections["shakespeare"]["figures"]
    assert (
        shakespeare["steps"] == 4
        and shakespeare["reached"] is False
        and shakespeare["stop_reason"] == "max_iters"
    )
    (target,) = [t for t in report["targets"] if t["section"] == "shakespeare"]
    assert target["met"] is None  # --tiny: not the shape the target is for
    md = (out / "report.md").read_text()
    for fragment in ("# GPU check: FAIL", "| tests | **fail** |", "| shakespeare | **pass** |", "## Targets",
                     "## tests: 'simulated failure (--fail-section)' exited with 1", "a simulated failure"):  # fmt: skip
        assert fragment in md, fragment
    assert all((out / "logs" / f"{name}.log").is_file() for name in sections)
    assert "shakespeare: pass" in done.stdout and "FAIL (tests)" in done.stdout
