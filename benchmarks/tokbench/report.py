"""The report: the targets, the table's rows (ours, HF, ours/HF, target, met), the notes under the
table and the machine they were measured on."""

import os
import platform
from pathlib import Path

import tiktoken
import tokenizers

TARGET_TRAIN_RATIO = 1.5  # ours/HF seconds, at most
TARGET_COMPRESSION_DIFF = 0.01  # |ours/HF bytes per token - 1|, at most
TARGET_ENCODE_RATIO = 3.0  # ours/HF MB/s, at least
TARGET_BIG_PEAK_MB = 2000  # peak RSS training on the big corpus, below
TARGET_SCALE_RATIO = 1.0  # ours/HF, seconds and peak memory, at most


def met(ok: bool) -> str:
    return "yes" if ok else "NO"


def training_rows(r: dict) -> list[tuple[str, ...]]:
    t = r["training"]
    name = f"train, vocab {r['vocab_size']}, {r['train_mb']:.2f} MB: seconds (best of {r['repeats']})"
    ok = met(t["ratio"] <= TARGET_TRAIN_RATIO)
    return [(name, f"{t['ours_s']:.2f}", f"{t['hf_s']:.2f}", f"{t['ratio']:.2f}x", "<= 1.5x", ok)]


def compression_rows(r: dict) -> list[tuple[str, ...]]:
    c = r["compression"]
    rows = []
    for v in c["hf"]:
        ok = met(abs(v["rel_diff"]) <= TARGET_COMPRESSION_DIFF)
        ours, hf = f"{c['ours_bytes_per_token']:.4f}", f"{v['bytes_per_token']:.4f}"
        rows.append(
            (f"bytes/token, held-out; {v['name']}", ours, hf, f"{v['rel_diff']:+.2%}", "within 1%", ok)
        )
    return rows


def encode_rows(r: dict) -> list[tuple[str, ...]]:
    rows = []
    for case in r["encode"]["cases"]:
        target = ">= 3x" if case["target"] else "-"
        ok = met(case["ratio"] >= TARGET_ENCODE_RATIO) if case["target"] else "-"
        ours, hf = f"{case['ours_mb_s']:.2f}", f"{case['hf_mb_s']:.2f}"
        rows.append((f"MB/s, {case['name']}", ours, hf, f"{case['ratio']:.2f}x", target, ok))
    return rows


def big_rows(r: dict) -> list[tuple[str, ...]]:
    b = r["big"]
    hf = b.get("hf")
    label = f"train on {b['corpus_mb']:.0f} MB synthetic"

    def row(what: str, key: str, fmt: str, target: str = "-", ok: str = "-") -> tuple[str, ...]:
        has_hf = bool(hf and hf.get(key))
        hf_cell = format(hf[key], fmt) if has_hf else "-"
        ratio = f"{b['ours'][key] / hf[key]:.2f}x" if has_hf else "-"
        return (f"{label}: {what}", format(b["ours"][key], fmt), hf_cell, ratio, target, ok)

    ok = met(b["ours"]["peak_rss_mb"] < TARGET_BIG_PEAK_MB)
    return [
        row("wall seconds (subprocess)", "wall_s", ".1f"),
        row("peak RSS MB, trainer process", "peak_rss_mb", ".0f", "< 2000", ok),
        row("peak RSS MB, largest worker", "workers_peak_rss_mb", ".0f"),
        row("peak RSS MB, sum over tree", "peak_tree_rss_mb", ".0f"),
    ]


def print_table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for n, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [cell.rjust(w) for cell, w in zip(row[1:], widths[1:])]
        print("  ".join(cells))
        if n == 0:
            print("  ".join("-" * w for w in widths))


def print_notes(r: dict) -> None:
    m, t, c, e = r["machine"], r["training"], r["compression"], r["encode"]
    ours_runs = ", ".join(f"{s:.2f}" for s in t["ours_runs_s"])
    hf_runs = ", ".join(f"{s:.2f}" for s in t["hf_runs_s"])
    hf_tokens = ", ".join(f"{v['tokens']:,}" for v in c["hf"])
    hf_trips = ", ".join(str(v["roundtrip"]) for v in c["hf"])
    notes = [
        f"machine: {m['cpu']}, {m['cores']} cores; Python {m['python']}, "
        f"tokenizers {m['tokenizers']}, tiktoken {m['tiktoken']}",
        f"training: vocab sizes ours {t['ours_vocab']}, HF {t['hf_vocab']}; "
        f"all runs (s): ours {ours_runs}; HF {hf_runs}",
        f"compression: {c['heldout_bytes']:,} held-out bytes; tokens: ours {c['ours_tokens']:,}, "
        f"HF (rows above, in order) {hf_tokens}; round trips ok: ours {c['ours_roundtrip']}, HF {hf_trips}",
        f"encode: held-out repeated to {e['text_mb']:.1f} MB = {e['lines']:,} lines; MB = 10^6 bytes; "
        f"HF: the GPT-2-split tokenizer; 'all cores': ours one thread per core for long texts (one thread for lines), HF rayon on {m['cores']}",
    ]
    if "big" in r:
        b = r["big"]
        hf_s = f", HF {b['hf']['train_s']:.1f}" if "hf" in b else ""
        notes.append(
            f"big corpus: {b['corpus_mb']:.1f} MB, {b['distinct_chunks']:,} distinct pre-token chunks "
            f"(the whole Shakespeare corpus: {r['corpus_distinct_chunks']:,}); "
            f"training seconds inside the subprocess: ours {b['ours']['train_s']:.1f}{hf_s}"
        )
    print()
    print("\n".join(notes))


def scale_rows(r: dict) -> list[tuple[str, ...]]:
    rows = []
    for s in r["scale"]:
        name = f"{s['kind']} {s['corpus_mb']:.0f} MB, vocab {s['vocab_size']}"
        ours, hf, rb = s.get("ours"), s.get("hf"), s.get("rustbpe")
        for label, key, unit in (
            ("seconds", "wall_s", "s"),
            ("peak PSS", "peak_pss_mb", "MB"),
            ("peak RSS", "peak_rss_mb", "MB"),
        ):
            if ours is None:
                continue
            line = f"{name}: {label} (rustbpe {rb[key]:.1f} {unit})" if rb else f"{name}: {label}"
            if hf:
                ratio = ours[key] / hf[key]
                rows.append(
                    (
                        line,
                        f"{ours[key]:.1f}",
                        f"{hf[key]:.1f}",
                        f"{ratio:.2f}x",
                        f"<= {TARGET_SCALE_RATIO:g}x",
                        met(ratio <= TARGET_SCALE_RATIO),
                    )
                )
            else:
                rows.append((line, f"{ours[key]:.1f}", "-", "-", "-", "-"))
    return rows


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [
            line.split(":", 1)[1].strip()
            for line in cpuinfo.read_text().splitlines()
            if line.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "tokenizers": tokenizers.__version__,
        "tiktoken": tiktoken.__version__,
    }
