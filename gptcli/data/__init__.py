"""Training data.

corpus.py       finding corpus files and reading them as text in bounded-memory blocks
token_cache.py  corpus + tokenizer -> token ids on disk (cached by content), split into train/val
sampler.py      random (x, y) batches from the ids, from a seeded generator (resumable)
"""
