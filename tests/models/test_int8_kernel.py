"""The int8 product of a decode step (gptcli/models/int8_matmul.cpp through int8_kernel.py): every kernel
this CPU runs (AVX-512, AVX2, torch's own) against a float64 reference, on shapes with every kind of
tail; a row's bits the same alone, in a batch and at any thread count; the GPT_INT8_KERNEL setting;
a build that fails falls back to torch's kernel with a note."""

import pytest
import torch

from gptcli.errors import GptError
from gptcli.models import int8_kernel
from gptcli.models.int8 import QuantizedLinear, dequantize_rows, int8_linear, quantize_rows

ISA = int(int8_kernel.build().int8_isa()) if int8_kernel.X86 and int8_kernel.build() is not None else 0
OURS = [name for name, isa in (("avx512", 2), ("avx2", 1)) if 0 < isa <= ISA]


def operands(rows: int, n_in: int, n_out: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n_out, n_in, generator=g) * torch.rand(n_out, 1, generator=g)
    q, scale = quantize_rows(w)
    return torch.randn(rows, n_in, generator=g), q, scale


@pytest.mark.parametrize("choice", OURS)
@pytest.mark.parametrize("n_in", [768, 3072, 100, 64 + 16 + 5, 16, 7])
def test_our_kernels_equal_the_float64_product(monkeypatch, choice, n_in):
    monkeypatch.setenv(int8_kernel.SETTING, choice)
    isa = int8_kernel.cpu_isa()
    x, q, scale = operands(9, n_in, 37)  # 9 rows: four pairs and one row alone
    bias = torch.randn(37)
    want = x.double() @ dequantize_rows(q, scale, torch.float64).T
    for b in (None, bias):
        got = int8_kernel.int8_matmul(x, q, scale, b, isa)
        assert got.dtype == torch.float32 and got.shape == (9, 37)
        expected = want if b is None else want + b.double()
        assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()  # fp32 sums, not bf16's 2**-8


@pytest.mark.parametrize("choice", OURS)
def test_a_row_has_the_same_bits_alone_in_a_batch_and_at_any_thread_count(monkeypatch, choice):
    monkeypatch.setenv(int8_kernel.SETTING, choice)
    isa = int8_kernel.cpu_isa()
    x, q, scale = operands(7, 200, 301, seed=1)  # 7 rows: three pairs and one alone; 301: streams + rest
    bias = torch.randn(301)
    together = int8_kernel.int8_matmul(x, q, scale, bias, isa)
    for row in range(7):
        alone = int8_kernel.int8_matmul(x[row : row + 1].contiguous(), q, scale, bias, isa)
        assert torch.equal(alone[0], together[row])
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert torch.equal(int8_kernel.int8_matmul(x, q, scale, bias, isa), together)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("choice", [*OURS, "torch"])
def test_a_quantized_layer_computes_its_dequantized_product_with_each_kernel(monkeypatch, choice):
    monkeypatch.setenv(int8_kernel.SETTING, choice)
    torch.manual_seed(2)
    linear = torch.nn.Linear(96, 80)
    layer = QuantizedLinear.of(linear)
    x = torch.randn(2, 3, 96)
    want = torch.nn.functional.linear(
        x.double(), dequantize_rows(layer.weight, layer.scale).double(), linear.bias.double()
    )
    tolerance = 1e-2 if choice == "torch" else 1e-5  # torch's kernel takes bf16 activations
    assert (layer(x) - want).abs().max() <= tolerance * want.abs().max()
    x16 = x.bfloat16()  # a bf16 model's activations stay bf16
    assert (
        int8_linear(x16, layer.weight, layer.scale.bfloat16(), linear.bias.bfloat16()).dtype == torch.bfloat16
    )


def test_the_setting_is_checked(monkeypatch):
    monkeypatch.setenv(int8_kernel.SETTING, "fastest")
    with pytest.raises(
        GptError, match="GPT_INT8_KERNEL='fastest': expected one of auto, avx2, avx512, torch"
    ):
        int8_kernel.cpu_isa()
    monkeypatch.setenv(int8_kernel.SETTING, "torch")
    assert int8_kernel.cpu_isa() == 0
    if ISA < 2:
        monkeypatch.setenv(int8_kernel.SETTING, "avx512")
        with pytest.raises(GptError, match="GPT_INT8_KERNEL=avx512: "):
            int8_kernel.cpu_isa()


def test_auto_goes_no_wider_than_torchs_cpu_capability(monkeypatch):
    monkeypatch.setenv(int8_kernel.SETTING, "auto")
    capability = torch.backends.cpu.get_cpu_capability()
    if not OURS or capability not in ("AVX2", "AVX512"):  # an ARM CPU, ATEN_CPU_CAPABILITY=default
        assert int8_kernel.cpu_isa() == 0
    else:
        assert int8_kernel.cpu_isa() == min(ISA, 2 if capability == "AVX512" else 1)


@pytest.mark.skipif(not int8_kernel.X86, reason="the kernel is built on x86 CPUs only")
def test_a_kernel_that_does_not_build_leaves_torchs_with_a_note(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    broken = tmp_path / "broken.cpp"
    broken.write_text("this is not C++\n")
    assert int8_kernel.build.__wrapped__(broken, "gptcli_int8_broken") is None
    err = capsys.readouterr().err
    assert "building the int8 CPU kernel once" in err
    assert "note: int8 products use torch's kernel: it could not be built" in err
