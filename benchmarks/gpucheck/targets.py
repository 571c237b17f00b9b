"""The targets, one row each, reported beside the figures: a missed target is never a failure."""

from typing import Any

from gpucheck.generate_bench import generate_row
from gpucheck.outputs import pct
from gpucheck.shakespeare import TARGET_LOSS


def targets(sections: dict[str, dict[str, Any]], tiny: bool) -> list[dict[str, Any]]:
    """One row per target whose section ran: what, target, measured (text), met (True/False/None)."""
    rows: list[dict[str, Any]] = []

    def add(section: str, what: str, target: str, value: Any, measured: str, met: bool | None):
        """met: None where nothing was measured, and always with --tiny (not the shapes the targets are for)."""
        rows.append(dict(section=section, what=what, target=target, value=value, measured=measured,
                         met=None if tiny else met))  # fmt: skip

    f = sections.get("train-bench", {}).get("figures")  # {} when the section failed: no row
    if f:
        mfu, best = f.get("mfu"), f.get("best_mfu")
        add("train-bench", f"124M MFU, batch {f['batch']}", ">= 50%", mfu, pct(mfu), at_least(mfu, 0.50))
        add(
            "train-bench",
            f"124M MFU, best batch ({f['best_batch']})",
            ">= 55%",
            best,
            pct(best),
            at_least(best, 0.55),
        )
        ratio = f["ratio_vs_hf"]
        add("train-bench", f"step time, ours / HF GPT2LMHeadModel, batch {f['batch']}", "<= 0.75x (the CPU target)",
            ratio, f"{ratio:.2f}x", ratio <= 0.75)  # fmt: skip
    f = sections.get("generate-bench", {}).get("figures")
    if f:
        for batch, floor in ((1, 3000), (64, 50000)):
            row = generate_row(f, "bf16", batch)
            best = row and max(row["eager_tok_s"], row["compiled_tok_s"])
            add("generate-bench", f"decode tok/s, bf16, batch {batch} (best of eager, compiled)", f">= {floor:,}",
                best, "n/a" if best is None else f"{best:,.0f}", at_least(best, floor))  # fmt: skip
        for row in f.get("results", []):
            ratio = row["compiled_vs_hf"]
            add("generate-bench", f"compiled / HF generate, {row['precision']} batch {row['batch']}", ">= 1x",
                ratio, f"{ratio:.2f}x (eager {row['eager_vs_hf']:.2f}x)", ratio >= 1.0)  # fmt: skip
    f = sections.get("shakespeare", {}).get("figures")
    if f:
        seconds = f["seconds_to_target"]
        measured = (
            f"{seconds:.1f} s"
            if f["reached"]
            else f"not reached in {f['steps']} steps (best val {f['best_val_loss']:.4f})"
        )
        add("shakespeare", f"shakespeare-char, seconds to val <= {TARGET_LOSS}", "<= 25 s", seconds, measured,
            f["reached"] and seconds <= 25)  # fmt: skip
    return rows


def at_least(value: float | None, floor: float) -> bool | None:
    return None if value is None else value >= floor
