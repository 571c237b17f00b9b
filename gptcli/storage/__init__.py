"""What is written to disk, and how it is read back safely.

files.py       atomic writes (temp + fsync + rename), JSON reading, file hashes
tensorfile.py  safetensors written from / read into tensors one at a time (no second copy)
checksums.py   checksums.json: the sha256 of every checkpoint file, recorded on save, checked on load
checkpoint.py  checkpoint directories: save, verified reads (config, weights), list, newest / best
checkpoint_info.py  whether a checkpoint or run is intact (gpt info --verify)

Storage imports only gptcli.config and gptcli.errors: a checkpoint loaded whole, its model built and
its tokenizer read, is gptcli.loading's.
"""
