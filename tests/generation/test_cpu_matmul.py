"""fp32 decoding on a CPU: input-major weights, OpenBLAS products, torch's threads meanwhile.

Which products a machine takes depends on its CPU (OpenBLAS on AMD, torch's MKL elsewhere):
GPT_CPU_MATMUL forces each path, so both run here whatever this CPU is.
"""

import pytest
import torch

from gptcli.config import SampleConfig
from gptcli.errors import GptError
from gptcli.generation import Engine, cpu_matmul
from gptcli.generation.cpu_matmul import (
    CPU_MATMUL,
    OpenBlasLinear,
    prepare_for_cpu,
    torch_threads,
    uses_openblas,
)
from tests.generation.test_engine import GREEDY, char_tokenizer, tiny_model


@pytest.fixture
def openblas(monkeypatch):
    """The setting that forces OpenBLAS products for weights of any size, whatever this CPU is."""
    monkeypatch.setenv(CPU_MATMUL, "openblas")


@pytest.mark.parametrize("path", ["torch", "openblas"])
def test_each_cpu_path_gives_the_reference_logits(monkeypatch, path):
    """Forced either way, the engine's decode logits equal a plain model's full forward within
    float tolerance: the two BLAS sum in other orders, ~1e-6 apart, never bit for bit."""
    monkeypatch.setenv(CPU_MATMUL, path)
    model, reference = tiny_model(), tiny_model()
    engine = Engine(model, char_tokenizer())
    assert uses_openblas(model) == (path == "openblas")
    prompt = [1, 2, 3, 4, 5]
    decoder = engine.decoder(1, len(prompt) + 4)
    with torch.no_grad():
        logits = [decoder.prefill([prompt])[0]]
        for token in (6, 7, 8):
            logits.append(decoder.step(torch.tensor([token]))[0].clone())
            prompt.append(token)
        full, _ = reference(torch.tensor([prompt]))  # every position at once, torch's own products
    torch.testing.assert_close(torch.stack(logits), full[0, -4:], rtol=1e-5, atol=1e-5)


def test_an_unknown_cpu_path_is_one_line_naming_the_setting(monkeypatch):
    monkeypatch.setenv(CPU_MATMUL, "mkl")
    with pytest.raises(GptError, match="GPT_CPU_MATMUL='mkl': expected one of auto, torch, openblas"):
        Engine(tiny_model(), char_tokenizer())


def test_auto_decides_by_the_cpu_and_torch_overrides_it(monkeypatch):
    monkeypatch.delenv(CPU_MATMUL, raising=False)  # auto, whatever the suite was started with
    monkeypatch.setattr(cpu_matmul, "openblas_is_faster", lambda: True)  # as on an AMD CPU
    big = torch.nn.Sequential(torch.nn.Linear(768, 768))
    prepare_for_cpu(big)
    assert type(big[0]) is OpenBlasLinear
    monkeypatch.setenv(CPU_MATMUL, "torch")
    big = torch.nn.Sequential(torch.nn.Linear(768, 768))
    prepare_for_cpu(big)
    assert type(big[0]) is torch.nn.Linear


def test_fp32_on_a_cpu_stores_the_weights_input_major_and_decodes_the_same():
    model, reference = tiny_model(), tiny_model()
    engine = Engine(model, char_tokenizer())
    weight = model.transformer.h[0].attn.c_attn.weight
    assert weight.shape == reference.transformer.h[0].attn.c_attn.weight.shape and weight.stride() == (1, 96)
    assert torch.equal(weight, reference.transformer.h[0].attn.c_attn.weight)
    config = SampleConfig(max_new_tokens=20, **GREEDY)
    plain = Engine(reference, char_tokenizer(), relayout=False)
    assert reference.transformer.h[0].attn.c_attn.weight.is_contiguous()
    assert (
        engine.generate([1, 2, 3], config).samples[0].ids == plain.generate([1, 2, 3], config).samples[0].ids
    )


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(1, 1, 24), (5, 3, 24), (7, 24)])
def test_openblas_linear_is_nn_linear(bias, shape):
    torch.manual_seed(0)
    plain = torch.nn.Linear(24, 40, bias=bias)
    ours = torch.nn.Linear(24, 40, bias=bias)
    ours.load_state_dict(plain.state_dict())
    model = torch.nn.Sequential(ours)
    prepare_for_cpu(model)
    ours.__class__ = OpenBlasLinear  # whatever the CPU
    x = torch.randn(*shape)
    with torch.no_grad():
        out = ours(x)
        torch.testing.assert_close(out, plain(x))
    assert out.shape == (*shape[:-1], 40)
    ours(x).sum().backward()  # with grad: nn.Linear's own forward, gradients as usual
    plain(x).sum().backward()
    torch.testing.assert_close(ours.weight.grad, plain.weight.grad)
    assert set(ours.state_dict()) == set(plain.state_dict())


def test_openblas_linear_follows_new_weights():
    # its numpy views of the weights are made once: weights loaded in place, or replaced, still count
    torch.manual_seed(0)
    layer = torch.nn.Linear(24, 40)
    prepare_for_cpu(torch.nn.Sequential(layer))
    layer.__class__ = OpenBlasLinear
    x = torch.randn(3, 24)
    with torch.no_grad():
        layer(x)
        layer.load_state_dict({"weight": torch.randn(40, 24), "bias": torch.randn(40)})  # in place
        torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias))
        layer.weight.data = torch.randn(24, 40).t()  # new memory, still input-major
        layer.bias.data = torch.randn(40)
        torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias))
        layer.weight.data = torch.randn(40, 24)  # not input-major: torch's own product
        torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias))


def test_an_engine_on_an_amd_cpu_multiplies_with_openblas_and_decodes_the_same(openblas):
    model, reference = tiny_model(), tiny_model()
    engine = Engine(model, char_tokenizer())
    assert uses_openblas(model) and engine.threads == 1
    assert type(model.lm_head) is OpenBlasLinear and type(model.transformer.h[0].mlp.c_fc) is OpenBlasLinear
    plain = Engine(reference, char_tokenizer(), relayout=False)
    assert not uses_openblas(reference) and plain.threads is None
    for config in (
        SampleConfig(max_new_tokens=20, **GREEDY),
        SampleConfig(max_new_tokens=20, seed=3, num_samples=3),
    ):
        ours, theirs = engine.generate([1, 2, 3], config), plain.generate([1, 2, 3], config)
        assert [s.ids for s in ours.samples] == [s.ids for s in theirs.samples]


def test_small_weights_keep_torch_products_and_threads(monkeypatch):
    """Below OPENBLAS_MIN_WEIGHTS a numpy product's overhead outweighs it: a small model is left as it was."""
    monkeypatch.delenv(CPU_MATMUL, raising=False)
    monkeypatch.setattr(cpu_matmul, "openblas_is_faster", lambda: True)
    model = tiny_model()  # its largest weight: 64 x 32
    engine = Engine(model, char_tokenizer())
    assert not uses_openblas(model) and engine.threads is None
    big = torch.nn.Sequential(torch.nn.Linear(768, 768), torch.nn.Linear(768, 256))
    prepare_for_cpu(big)
    assert [type(m) for m in big] == [OpenBlasLinear, torch.nn.Linear]  # 589,824 and 196,608 weights


def test_generating_sets_torch_threads_to_one_and_back(openblas):
    engine = Engine(tiny_model(), char_tokenizer())
    before, seen = torch.get_num_threads(), []
    for _ in engine.start([1, 2], SampleConfig(max_new_tokens=3, **GREEDY)):
        seen.append(torch.get_num_threads())
    assert seen == [1, 1, 1] and torch.get_num_threads() == before


def test_a_compiled_engine_keeps_torch_products(openblas):
    model = tiny_model()
    engine = Engine(model, char_tokenizer(), compile=True)
    assert not uses_openblas(model) and engine.threads is None
    assert model.lm_head.weight.t().is_contiguous()  # the layout still changes


def test_torch_threads_restores_the_count():
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    with torch_threads(None):
        assert torch.get_num_threads() == before
    with pytest.raises(ValueError), torch_threads(1):
        raise ValueError
    assert torch.get_num_threads() == before
    first, second = torch_threads(1), torch_threads(1)
    first.__enter__(), second.__enter__()  # two generations interleaved, the first one ends first
    first.__exit__(None, None, None)
    second.__exit__(None, None, None)
    assert torch.get_num_threads() == before


def test_the_vendor_decides(monkeypatch):
    cpu_matmul.openblas_is_faster.cache_clear()
    monkeypatch.setattr(cpu_matmul, "cpu_vendor", lambda: "GenuineIntel")
    assert not cpu_matmul.openblas_is_faster()
    cpu_matmul.openblas_is_faster.cache_clear()
    monkeypatch.setattr(cpu_matmul, "cpu_vendor", lambda: "AuthenticAMD")
    monkeypatch.setattr(cpu_matmul, "numpy_blas", lambda: "scipy-openblas")
    assert cpu_matmul.openblas_is_faster()
    cpu_matmul.openblas_is_faster.cache_clear()
    assert cpu_matmul.cpu_vendor() in ("GenuineIntel", "AuthenticAMD", "")  # this machine's, read for real
