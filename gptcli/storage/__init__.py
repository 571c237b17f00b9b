"""What is written to disk, and how it is read back safely.

files.py       atomic writes (temp + fsync + rename), JSON reading, file hashes
tensorfile.py  safetensors written from / read into tensors one at a time (no second copy)
checkpoint.py  checkpoint directories: save, validated load, list, newest / best, describe
"""
