"""Fuzzing what we read: damaged safetensors, JSON configs and tokenizers, and configs of wrong
types or unknown keys give a clean one-line GptError (or load fine), never another exception, and
never change the file."""

import json

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gptcli.config import ModelConfig, TrainConfig, validate
from gptcli.errors import GptError
from gptcli.loading import load_checkpoint
from gptcli.models import GPT
from gptcli.storage import checkpoint as ckpt
from gptcli.tokenizers import CharTokenizer, load_tokenizer

# derandomize: the same examples on every run, so CI stays reproducible (raise max_examples to hunt)
FUZZ = settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=True)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=8,
)


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    torch.manual_seed(0)
    tok = CharTokenizer(list("abcdef"), {"<|endoftext|>": 6})
    config = ModelConfig(vocab_size=7, block_size=8, n_layer=1, n_head=2, n_embd=8)
    path = ckpt.save_checkpoint(tmp_path_factory.mktemp("c") / "ck", GPT(config), config, tok, {"step": 1})
    return {f.name: f.read_bytes() for f in path.iterdir()}  # checksums.json included


def try_load(directory) -> None:
    try:
        load_checkpoint(directory)
    except GptError as e:
        assert "\n" not in str(e) and str(e)


def damaged_copy(tmp_path, good, name, data):
    directory = tmp_path / "damaged"
    directory.mkdir(exist_ok=True)
    for n, content in good.items():
        (directory / n).write_bytes(data if n == name else content)
    return directory


@FUZZ
@given(
    name=st.sampled_from(list(ckpt.REQUIRED)),
    cut=st.floats(0, 1),
    flips=st.lists(st.tuples(st.floats(0, 1), st.integers(1, 255)), max_size=4),
)
def test_truncated_or_bit_flipped_checkpoint_files(tmp_path, good, name, cut, flips):
    data = bytearray(good[name][: int(len(good[name]) * cut)] if cut < 1 else good[name])
    for where, xor in flips:
        if data:
            data[min(int(where * len(data)), len(data) - 1)] ^= xor
    directory = damaged_copy(tmp_path, good, name, bytes(data))
    try_load(directory)
    assert (directory / name).read_bytes() == bytes(data)  # reading never writes


def with_dtype(weights: bytes, tensor: int, dtype: str, keep_size: bool) -> bytes:
    """The weights file with one tensor's header dtype changed (and its byte range, unless keep_size)."""
    n = int.from_bytes(weights[:8], "little")
    header = json.loads(weights[8 : 8 + n])
    name = sorted(k for k in header if k != "__metadata__")[
        tensor % (len(header) - ("__metadata__" in header))
    ]
    header[name]["dtype"] = dtype
    if not keep_size:
        begin, end = header[name]["data_offsets"]
        header[name]["data_offsets"] = [begin, begin + (end - begin) // 2]
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw + weights[8 + n :]


@FUZZ
@given(
    tensor=st.integers(0, 100),
    dtype=st.sampled_from(
        ["F64", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL", "F8_E4M3", "Q4", ""]
    ),
    keep_size=st.booleans(),
)
def test_weights_of_the_wrong_dtype(tmp_path, good, tensor, dtype, keep_size):
    data = with_dtype(good[ckpt.WEIGHTS], tensor, dtype, keep_size)
    directory = damaged_copy(tmp_path, good, ckpt.WEIGHTS, data)
    try:
        model, _, _ = load_checkpoint(directory)
        assert dtype in ("F16", "BF16", "F64")  # only another float width may load, converted
        assert all(p.dtype == torch.float32 for p in model.parameters())
    except GptError as e:
        assert "\n" not in str(e) and str(e)
    assert (directory / ckpt.WEIGHTS).read_bytes() == data


@FUZZ
@given(
    model=json_values,
    extra=st.dictionaries(st.sampled_from(["step", "model", "format", "version"]), json_values, max_size=2),
)
def test_config_json_with_wrong_types_or_values(tmp_path, good, model, extra):
    config = {**json.loads(good["config.json"]), "model": model, **extra}
    try_load(damaged_copy(tmp_path, good, "config.json", json.dumps(config).encode()))


@FUZZ
@given(
    field=st.sampled_from(
        ["kind", "chars", "special_tokens", "merges", "pattern", "version", "byte_order", "nonsense"]
    ),
    value=json_values,
)
def test_tokenizer_json_with_wrong_types_or_values(tmp_path, good, field, value):
    data = {**json.loads(good["tokenizer.json"]), field: value}
    path = tmp_path / "tok.json"
    path.write_text(json.dumps(data))
    try:
        load_tokenizer(path)
    except GptError as e:
        assert "\n" not in str(e)


@FUZZ
@given(
    values=st.dictionaries(
        st.sampled_from(list(TrainConfig.model_fields) + ["unknown_key"]), json_values, max_size=4
    )
)
def test_train_configs_of_wrong_types_or_unknown_keys(values):
    try:
        validate(TrainConfig, **values)
    except GptError as e:
        assert "\n" not in str(e)
