"""Hugging Face Llama folders (LlamaForCausalLM with a byte-level BPE tokenizer in
tokenizer.json, as HuggingFaceTB/SmolLM2-135M is saved) as attnlab gpt checkpoints: what
`attnlab convert` reads for them.

The weights are Llama's (hf_gpt.llama_from_hf: RoPE, RMSNorm, SwiGLU, grouped-query heads, a
head tied to the embedding or not), loaded in float32 whatever dtype the folder holds (SmolLM2's
is bfloat16), so that a CPU samples and inspects them as transformers computes in float32. The
tokenizer crosses as GPT-NeoX's does (hf_neox.byte_level_from_hf): attnlab numbers its bytes,
merges, added tokens, then special tokens, the model's token rows moved to match (SmolLM2's 17
special tokens come first in its ids, last in ours), and only once both give the same ids. Its
pre-tokenizer decides how text is cut (hf_neox.pre_tokenization: SmolLM2 cuts out each digit
before GPT-2's regex). It is read from tokenizer.json as the tokenizers library runs it
(PreTrainedTokenizerFast), not through AutoTokenizer: transformers 5's GPT2Tokenizer, which
SmolLM2's tokenizer_config.json names, puts GPT-2's pre-tokenizer in place of the file's, and
so cuts "a  1" otherwise than SmolLM2 was trained on.

A tokenizer that adds tokens of its own to every text (Llama 3's puts <|begin_of_text|> first)
is refused: `attnlab sample` and `inspect` encode a text as it is, and such a model reads a text
without its first token as one it was never trained on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from attnlab.errors import UserError
from attnlab.interop.hf_neox import read_causal_lm

LLAMA = "LlamaForCausalLM"


def is_llama(config: dict[str, Any]) -> bool:
    """Whether a model config is a Llama's."""
    return config.get("model_type") == "llama" or LLAMA in (config.get("architectures") or [])


def read_hf_llama(
    source: str,
    config: dict[str, Any],
    options: dict[str, Any],
    log: Callable[[str], None] = print,
) -> tuple[nn.Module, dict[str, Any]]:
    """attnlab's Llama-shaped GPT and its checkpoint's artefacts (its tokenizer) from a Hugging
    Face LlamaForCausalLM folder or hub name whose `config` and from_pretrained `options`
    hf_folders read; `log` says how many padding rows are left out, if any."""
    missing = " (attnlab reads a Llama's byte-level BPE from it, not a SentencePiece model)"
    return read_causal_lm(LLAMA, source, config, options, log, missing, _check_nothing_added)


def _check_nothing_added(hf_tokenizer, source: str) -> None:
    """A tokenizer that encodes a text as its tokens alone (no BOS or EOS of its own added),
    else a UserError naming what it adds."""
    text = "Hello"
    plain = hf_tokenizer(text, add_special_tokens=False)["input_ids"]
    full = hf_tokenizer(text)["input_ids"]
    if full == plain:
        return
    added = [hf_tokenizer.convert_ids_to_tokens(i) for i in full]
    before = added[: full.index(plain[0])] if plain and plain[0] in full else added
    where = f"puts {' '.join(before)} before" if before else "adds special tokens to"
    raise UserError(
        f"the tokenizer of {source} {where} every text (its post-processor), which attnlab's "
        "sample and inspect do not: a Llama that expects it does not convert yet"
    )
