"""The pieces of `benchmarks/bench_tokenizer.py` (ours vs Hugging Face `tokenizers`), one job each.

    common          MB, log, timed: what every part uses
    trainers        the two trainers side by side: ours and HF's, set up alike
    training        1. training time on the corpus's train part
    compression     2. bytes per token and round trips on its held-out part
    encode          3. encode throughput, one string and lines, one thread and all cores
    corpora         the synthetic and at-scale corpora, written deterministically
    big             4. peak memory training on a big synthetic corpus, each trainer in a subprocess
    scale           5. at scale: `gpt tokenizer train`, HF and rustbpe, each in a fresh process
    report          the targets, the table's rows and the notes under it

Imported as a sibling of bench_tokenizer.py (`from tokbench import ...`), as Python finds it when
the script runs by path.
"""
