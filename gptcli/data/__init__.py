"""Training data.

sources.py        finding a corpus (files, dirs, globs, HF dataset folders) and reading it as documents
records.py        the text of each record of JSON Lines, JSON arrays, Parquet and Arrow files
corpus.py         a plain-text document as text in bounded-memory blocks cut at safe points
prepare.py        corpus + tokenizer -> a token store (shards of ids), in parallel, resumable
block_encoder.py  its encoding: pieces -> blocks -> ids, in worker processes, in order
shard_writer.py   its writing: shards recorded in progress.json, the val tail moved, meta.json's content
store.py          a token store on disk: layout, meta.json, checks; TokenShards, its splits as arrays
token_cache.py    the training data: a store given, or the corpus's store in the cache -> train/val
sampler.py        random (x, y) batches from the ids, from a seeded generator (resumable)
tokenizer_corpus.py  a tokenizer trained on a corpus: the files read here, the texts to gptcli.tokenizers
"""
