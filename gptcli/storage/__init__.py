"""What is written to disk, and how it is read back safely.

files.py       atomic writes (temp + fsync + rename), JSON reading, file hashes
tensorfile.py  safetensors written from / read into tensors one at a time (no second copy)
checksums.py   checksums.json: the sha256 of every checkpoint file, recorded on save, checked on load
checkpoint.py  checkpoint directories: save, verified load, list, the newest / best intact one
checkpoint_info.py  what a checkpoint or run holds (gpt info) and whether it is intact (--verify)
"""
