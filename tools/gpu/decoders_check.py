"""FMS's decoders through LLM on the GPU, greedy, against HF generate on the GPU: tests/test_fms.py's
test_other_decoders_match_hf (tiny random fp32 configs: LLaMA, Mistral with a window of 8, Qwen3, Granite,
Mixtral, gpt-oss), here with CUDA graphs and multi-step plans on, in inference mode (paged_forward's default).
usage: OUT=dir python3 tools/gpu/decoders_check.py     (writes $OUT/decoders_check_<device>.json)"""

import datetime, json, os, sys, tempfile, time, traceback
from pathlib import Path

import torch
import transformers as T

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from paged_flex.engine import LLM, SamplingParams  # noqa: E402

dev = os.environ.get("DEV", "cuda")  # DEV=cpu: check the script before spending GPU time
name = torch.cuda.get_device_name() if dev == "cuda" else "cpu"
res = {
    "device": name,
    "torch": torch.__version__,
    "date": datetime.datetime.now().isoformat(timespec="seconds"),
}
res["workload"] = __doc__.split("\n")[0] + " " + __doc__.split("\n")[1]
res["results"] = {}
base = dict(
    vocab_size=300,
    hidden_size=64,
    intermediate_size=176,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    tie_word_embeddings=False,
)
kinds = {
    "llama": (T.LlamaConfig, T.LlamaForCausalLM, dict(head_dim=16)),
    "mistral": (T.MistralConfig, T.MistralForCausalLM, dict(sliding_window=8, head_dim=16)),
    "qwen3": (T.Qwen3Config, T.Qwen3ForCausalLM, dict(head_dim=16, rope_theta=5000.0)),
    "granite": (
        T.GraniteConfig,
        T.GraniteForCausalLM,
        dict(embedding_multiplier=2.0, logits_scaling=1.5, residual_multiplier=0.5, attention_multiplier=0.3),
    ),
    "mixtral": (
        T.MixtralConfig,
        T.MixtralForCausalLM,
        dict(intermediate_size=64, num_local_experts=4, num_experts_per_tok=2),
    ),
    "gpt_oss": (
        T.GptOssConfig,
        T.GptOssForCausalLM,
        dict(intermediate_size=64, num_local_experts=4, num_experts_per_tok=2),
    ),
}
tmp = Path(tempfile.mkdtemp())
for kind, (config_cls, model_cls, extra) in kinds.items():
    t0 = time.time()
    try:
        torch.manual_seed(0)
        hf = model_cls(config_cls(**{**base, **extra})).eval()
        for layer in hf.model.layers if kind == "gpt_oss" else []:
            layer.self_attn.sinks.data.normal_(0, 2)
        hf.save_pretrained(tmp / kind)
        hf = hf.to(dev)
        g = torch.Generator().manual_seed(1)
        lens = (5, 140, 11) if kind == "gpt_oss" else (5, 23, 11)
        prompts = [torch.randint(3, 300, (n,), generator=g).tolist() for n in lens]
        with torch.no_grad():
            expected = [
                hf.generate(
                    torch.tensor([p], device=dev), max_new_tokens=20, min_new_tokens=20, do_sample=False
                )[0, len(p) :].tolist()
                for p in prompts
            ]
        r = {}
        for graphs in (True, False):
            llm = LLM(
                tmp / kind,
                page_size=4,
                device=dev,
                dtype=torch.float32,
                max_num_batched_tokens=16,
                max_num_seqs=4,
                cuda_graphs=graphs,
            )
            outs = llm.generate(
                prompts, SamplingParams(max_tokens=20, temperature=0, ignore_eos=True), use_tqdm=False
            )
            got = [o.outputs[0].token_ids for o in outs]
            r[f"graphs={graphs}"] = sum(a == b for a, b in zip(got, expected))
            del llm
        res["results"][kind] = {"prompts_identical": r, "of": len(prompts), "seconds": time.time() - t0}
    except Exception:
        res["results"][kind] = {"error": traceback.format_exc()[-1500:]}
    print(kind, res["results"][kind], flush=True)
    json.dump(
        res,
        open(
            os.path.join(os.environ.get("OUT", "."), f"decoders_check_{name.split()[-1].lower()}.json"), "w"
        ),
        indent=1,
    )
