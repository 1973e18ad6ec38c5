"""The backend registry decides without a GPU, and the CPU path runs without Triton.

python -m pytest -q tests/test_backends.py
"""

from __future__ import annotations
import subprocess, sys, textwrap
from types import SimpleNamespace

import pytest
import torch

from paged_flex.backends import BACKENDS, TRITON_INTERPRETED, select_backend, triton_available


def case(device="cuda", dtype=torch.bfloat16, head_dim=128, page_size=16):
    return SimpleNamespace(device=torch.device(device), dtype=dtype, head_dim=head_dim, page_size=page_size)


@pytest.mark.parametrize("decode", [True, False])
@pytest.mark.parametrize("head_dim", [8, 16, 64, 96, 128])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cpu_never_gets_a_cuda_only_backend(decode, head_dim, dtype):
    for requested in ("auto", "gather", "flex"):
        name = select_backend(case("cpu", dtype, head_dim), decode, requested)
        assert "cpu" in BACKENDS[name].devices, (requested, name)
    assert select_backend(case("cpu", dtype, head_dim), decode) == "gather"


@pytest.mark.skipif(TRITON_INTERPRETED, reason="under TRITON_INTERPRET=1 the Triton kernels run on the CPU")
def test_triton_on_the_cpu_is_refused_naming_the_device():
    with pytest.raises(ValueError, match="device cpu"):
        select_backend(case("cpu"), decode=True, requested="triton")


@pytest.mark.parametrize("decode", [True, False])
def test_head_dim_8_on_cuda_is_not_flex(decode):
    "Inductor refuses FlexAttention below head_dim 16, and the Triton kernels need a power of two >= 16."
    assert select_backend(case(head_dim=8), decode) not in ("flex", "triton_decode", "triton_prefill")
    with pytest.raises(ValueError, match="head_dim >= 16"):
        select_backend(case(head_dim=8), decode, requested="flex")


@pytest.mark.skipif(not triton_available(), reason="needs Triton installed (pip install paged_flex[triton])")
def test_cuda_decode_picks_the_graph_capturable_kernel():
    assert select_backend(case(), decode=True, cuda_graph=True) == "triton_decode"
    with pytest.raises(ValueError, match="CUDA graph"):
        select_backend(case(), decode=True, requested="flex", cuda_graph=True)


def test_unknown_backend_names_the_choices():
    with pytest.raises(ValueError, match="'auto', 'triton', 'flex', 'gather'.*got 'cuda'"):
        select_backend(case(), decode=True, requested="cuda")


NO_TRITON = textwrap.dedent("""
    import sys, tempfile
    sys.modules["triton"] = None                           # `import triton` raises ImportError
    import torch
    import paged_flex
    from paged_flex import LLM, PagedKVCache, SamplingParams, paged_attention, reference_attention
    import paged_flex.fms, paged_flex.fused, paged_flex.engine, paged_flex.backends
    cache = PagedKVCache(1, 2, 16, 16, 4, device="cpu")
    cache.reserve(0, 9)
    ids, pos = torch.zeros(9, dtype=torch.long), torch.arange(9)
    cache.assign(0, ids, pos, torch.randn(9, 2, 16), torch.randn(9, 2, 16))
    q = torch.randn(9, 4, 16)
    out = paged_attention(q, cache, 0, ids, pos).double()
    err = (out - reference_attention(q, cache, 0, ids, pos)).abs().max()
    assert err < 1e-5, err
    try:
        paged_attention(q, cache, 0, ids, pos, backend="triton")
        raise AssertionError("backend='triton' ran without Triton")
    except ValueError as e:
        assert "needs Triton" in str(e), e
    folder = paged_flex.fms.save_random_llama(tempfile.mkdtemp())
    llm = LLM(folder, device="cpu", kv_cache_memory=2**22, max_num_seqs=4)
    outs = llm.generate(["Once upon a time", "The cache"], SamplingParams(max_tokens=5, temperature=0))
    lens = [len(o.outputs[0].token_ids) if hasattr(o, "outputs") else len(o.token_ids) for o in outs]
    assert lens == [5, 5]
    assert not [m for m in sys.modules if m.startswith("triton") and sys.modules[m] is not None]
    print("ok")
""")


def test_public_api_without_triton():
    "Import and run the CPU path, the FMS model and the engine with `import triton` failing."
    run = subprocess.run([sys.executable, "-c", NO_TRITON], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), run.stderr[-3000:]
