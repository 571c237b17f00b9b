"""The report: OUT/report.json (everything) and OUT/report.md (the sections' table, the targets
beside the figures, the benchmarks' tables and the last lines of each failure)."""

import json
from pathlib import Path
from typing import Any

from gpucheck.env import env_summary
from gpucheck.outputs import gib, pct
from gpucheck.sections import SECTIONS


def write_report(report: dict[str, Any], out: Path) -> None:
    """report.json and report.md, each written whole to a temp file and renamed into place."""
    try:
        md = markdown(report)
    except Exception as e:  # a figure of an unexpected shape must not cost the report: report.json has all
        md = f"# GPU check\n\nreport.md could not be drawn ({type(e).__name__}: {e}); see report.json.\n"
    for name, text in (("report.json", json.dumps(report, indent=2) + "\n"), ("report.md", md)):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(out / name)


def cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown(report: dict[str, Any]) -> str:
    sections = report["sections"]
    failed = [s["name"] for s in sections if s["status"] == "fail"]
    verdict = "FAIL" if failed else ("PASS" if report["finished"] else "RUNNING")
    lines = [
        f"# GPU check: {verdict}",
        "",
        f"- {report['started']} to {report['finished'] or '(still running)'}, {report['seconds']:.0f} s; "
        f"host {report['host']}, commit {report['commit'] or 'unknown'}",
        f"- command: `{report['command']}`",
        f"- device {report['device']}; {env_summary(report['env'])}"
        if report["env"]
        else f"- device {report['device']}",
        f"- exit code {report['exit_code']}: 0 only when no section failed ({', '.join(failed) or 'none did'}); "
        "a missed target is reported here, not a failure",
    ]
    if report["tiny"]:
        lines.append(
            "- **--tiny**: tiny models, torch.compile on its eager backend: this proves the plumbing, "
            "its figures are not measurements of anything"
        )
    lines += [
        "",
        "## Sections",
        "",
        "| section | status | seconds | s left at its start | result |",
        "|---|---|---|---|---|",
    ]
    for s in sections:
        result = summarize(s)
        lines.append(
            f"| {s['name']} | **{s['status']}** | {s['seconds']:.1f} | {s['time_left_s']:.0f} | {cell(result)} |"
        )
    if report["targets"]:
        lines += ["", "## Targets", "", "| what | target | measured | met |", "|---|---|---|---|"]
        for t in report["targets"]:
            met = {True: "yes", False: "**no**", None: "–"}[t["met"]]
            lines.append(f"| {cell(t['what'])} | {cell(t['target'])} | {cell(t['measured'])} | {met} |")
    lines += benchmark_tables(sections)
    for s in sections:
        if s["tail"]:
            lines += [
                "",
                f"## {s['name']}: {s['note']}",
                "",
                f"Last lines (all of it: `{s['log']}`):",
                "",
                "```",
                s["tail"],
                "```",
            ]
    return "\n".join(lines) + "\n"


def summarize(record: dict[str, Any]) -> str:
    """A section's line in the report: its key figures, or why it did not pass."""
    if record["status"] != "pass":
        return record["note"] or ""
    section = next(s for s in SECTIONS if s.name == record["name"])
    try:
        return section.summary(record["figures"])
    except (KeyError, TypeError, ValueError) as e:
        return f"(figures in report.json; no summary: {type(e).__name__}: {e})"


def shape_text(shape: dict[str, int]) -> str:
    return (
        f"{shape['n_layer']} layers, {shape['n_head']} heads, {shape['n_embd']} wide, "
        f"block {shape['block_size']}, vocab {shape['vocab_size']}"
    )


def benchmark_tables(sections: list[dict[str, Any]]) -> list[str]:
    lines: list[str] = []
    f = next((s["figures"] for s in sections if s["name"] == "train-bench" and s["figures"]), None)
    if f:
        lines += ["", f"## Training, {shape_text(f['shape'])}, {f['precision']}", "",
                  "| batch | ms / step | tokens/s | MFU | peak memory |", "|---|---|---|---|---|"]  # fmt: skip
        rows = [{"batch": f["batch"], "ours_ms": f["ours_ms"], "ours_tokens_per_s": f["tokens_per_s"],
                 "mfu": f["mfu"], "peak": f["peak_memory_gib"]}]  # fmt: skip
        rows += [{**r, "peak": gib(r.get("peak_memory_bytes"))} for r in f["sweep"]]
        for r in rows:
            if "ours_ms" not in r:
                lines.append(
                    f"| {r['batch']} | {'out of memory' if r.get('oom') else r.get('skipped', '?')} | | | |"
                )
                continue
            peak = "n/a" if r["peak"] is None else f"{r['peak']:.2f} GiB"
            lines.append(
                f"| {r['batch']} | {r['ours_ms']:.1f} | {r['ours_tokens_per_s']:,.0f} | {pct(r['mfu'])} | {peak} |"
            )
        lines.append(f"\nBatch {f['batch']} beside HF's GPT2LMHeadModel: {f['ours_ms']:.1f} vs {f['hf_ms']:.1f} ms "
                     f"({f['ratio_vs_hf']:.2f}x); its peak memory was taken with HF's weights still held.")  # fmt: skip
    f = next((s["figures"] for s in sections if s["name"] == "generate-bench" and s["figures"]), None)
    if f:
        lines += ["", f"## Generation, {shape_text(f['shape'])}, read bandwidth {f['read_bandwidth_gb_s']:,.0f} GB/s", "",
                  "| precision | batch | eager tok/s | compiled tok/s | HF tok/s | eager / HF | compiled / HF | of the bandwidth bound |",
                  "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in f["results"]:
            bound = pct(r.get("bound_fraction")) if "bound_fraction" in r else ""
            lines.append(f"| {r['precision']} | {r['batch']} | {r['eager_tok_s']:,.0f} | {r['compiled_tok_s']:,.0f} | "
                         f"{r['hf_tok_s']:,.0f} | {r['eager_vs_hf']:.2f}x | {r['compiled_vs_hf']:.2f}x | {bound} |")  # fmt: skip
    return lines
