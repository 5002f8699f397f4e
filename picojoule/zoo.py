"""Model zoo: reference architectures built offline (no downloads), with optional local weights.

``build_model(name, weights)`` returns ``(model in eval mode, example input of batch size 1)``.
Module names follow the upstream sources so their checkpoints load strictly:

* ``resnet20/32/56``: the CIFAR-10 ResNet of He et al. 2016 with option-A shortcuts, as in
  akamaster/pytorch_resnet_cifar10 (checkpoint keys ``module.conv1.weight`` ...).
* ``resnet18/50``, ``mobilenet_v2``: torchvision-identical architectures and names.
* ``bert_base``: a BERT-base encoder stack (HF names, no embeddings or pooler) on hidden states.
* ``gpt2_prefill`` / ``gpt2_decode``: a GPT-2-small-shaped decoder: prefill of 512 tokens, and one decode step
  whose KV cache (1023 positions) is an input, so that its traffic is priced.

Random initialisation is seeded, so building the same name twice gives the same parameters.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from picojoule.errors import PicojouleError, WeightsError

#: Normalisation of the pretrained CIFAR-10 ResNets: RGB in [0, 1], then (x - mean) / std per channel.
CIFAR_MEAN = (0.485, 0.456, 0.406)
CIFAR_STD = (0.229, 0.224, 0.225)

_INIT_SEED = 0


# --------------------------------------------------------------------------- CIFAR ResNet


class PadShortcut(nn.Module):
    """Option-A shortcut: subsample space by ``stride`` and zero-pad channels ``in_planes -> out_planes``.

    The padding is split evenly (extra channel at the back), so 16 -> 32 pads 8 channels on each side.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        if out_planes < in_planes:
            raise ValueError(f"PadShortcut cannot shrink channels ({in_planes} -> {out_planes})")
        self.in_planes, self.out_planes, self.stride = in_planes, out_planes, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        front = (self.out_planes - self.in_planes) // 2
        back = self.out_planes - self.in_planes - front
        return F.pad(x[:, :, :: self.stride, :: self.stride], (0, 0, 0, 0, front, back))

    def extra_repr(self) -> str:
        return f"in_planes={self.in_planes}, out_planes={self.out_planes}, stride={self.stride}"


class CifarBasicBlock(nn.Module):
    """Two 3x3 conv-BN pairs plus an identity or :class:`PadShortcut` residual."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        needs_pad = stride != 1 or in_planes != planes
        self.shortcut: nn.Module = PadShortcut(in_planes, planes, stride) if needs_pad else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR-10 ResNet-(6n+2): widths 16/32/64, ``n`` blocks per stage, global pool, ``linear``."""

    def __init__(self, n: int, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._stage(16, 16, n, stride=1)
        self.layer2 = self._stage(16, 32, n, stride=2)
        self.layer3 = self._stage(32, 64, n, stride=2)
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    @staticmethod
    def _stage(in_planes: int, planes: int, n: int, stride: int) -> nn.Sequential:
        blocks = [CifarBasicBlock(in_planes, planes, stride)]
        blocks += [CifarBasicBlock(planes, planes) for _ in range(n - 1)]
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


# --------------------------------------------------------------------------- torchvision ResNet


class BasicBlock(nn.Module):
    """torchvision ResNet basic block (two 3x3 convs)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """torchvision ResNet v1.5 bottleneck (1x1, strided 3x3, 1x1 to ``4 * planes``)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """torchvision ImageNet ResNet: 7x7 stem, max-pool, four stages, global pool, ``fc``."""

    def __init__(self, block: type[BasicBlock | Bottleneck], layers: list[int], num_classes: int = 1000) -> None:
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(
        self, block: type[BasicBlock | Bottleneck], planes: int, blocks: int, stride: int = 1
    ) -> nn.Sequential:
        out_planes = planes * block.expansion
        downsample = None
        if stride != 1 or self.inplanes != out_planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, out_planes, 1, stride=stride, bias=False), nn.BatchNorm2d(out_planes)
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = out_planes
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# --------------------------------------------------------------------------- torchvision MobileNetV2


class ConvBNReLU(nn.Sequential):
    """Conv (no bias) -> BN -> ReLU6, named ``0``, ``1``, ``2`` like torchvision's Conv2dNormActivation."""

    def __init__(self, in_planes: int, out_planes: int, kernel_size: int = 3, stride: int = 1, groups: int = 1) -> None:
        super().__init__(
            nn.Conv2d(in_planes, out_planes, kernel_size, stride, (kernel_size - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out_planes),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    """MobileNetV2 block: optional 1x1 expansion, 3x3 depthwise, linear 1x1 projection (``conv``)."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = [ConvBNReLU(inp, hidden, kernel_size=1)] if expand_ratio != 1 else []
        layers += [
            ConvBNReLU(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, oup, 1, bias=False),
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    """torchvision MobileNetV2 (width 1.0): ``features.0`` ... ``features.18``, ``classifier.1``."""

    #: (expansion t, output channels c, repeats n, first stride s) per stage.
    SETTINGS = (
        (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)
    )

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2) -> None:
        super().__init__()
        features: list[nn.Module] = [ConvBNReLU(3, 32, stride=2)]
        inp = 32
        for t, c, n, s in self.SETTINGS:
            for i in range(n):
                features.append(InvertedResidual(inp, c, s if i == 0 else 1, t))
                inp = c
        features.append(ConvBNReLU(inp, 1280, kernel_size=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(1280, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(self.features(x), (1, 1))
        return self.classifier(torch.flatten(x, 1))


# --------------------------------------------------------------------------- BERT encoder


class BertSelfAttention(nn.Module):
    """Multi-head self-attention with explicit projections and ``torch.matmul`` (no fused SDPA)."""

    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden size {hidden} is not a multiple of {heads} heads")
        self.num_heads, self.head_dim = heads, hidden // heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        """(B, S, H*D) -> (B, H, S, D)."""
        return x.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._split(self.query(x)), self._split(self.key(x)), self._split(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim)
        context = torch.matmul(torch.softmax(scores, dim=-1), v)
        return context.transpose(1, 2).flatten(-2)


class BertResidualNorm(nn.Module):
    """``dense`` projection, residual add and post-LayerNorm (HF's BertSelfOutput / BertOutput)."""

    def __init__(self, in_features: int, hidden: int) -> None:
        super().__init__()
        self.dense = nn.Linear(in_features, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=1e-12)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class BertAttention(nn.Module):
    """``self`` attention followed by its ``output`` projection and norm."""

    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.self = BertSelfAttention(hidden, heads)
        self.output = BertResidualNorm(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(x), x)


class BertIntermediate(nn.Module):
    """Feed-forward expansion ``dense`` + GELU."""

    def __init__(self, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, intermediate)
        self.intermediate_act_fn = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.intermediate_act_fn(self.dense(x))


class BertLayer(nn.Module):
    """One post-LN transformer layer: attention, then feed-forward, each with residual + LayerNorm."""

    def __init__(self, hidden: int, heads: int, intermediate: int) -> None:
        super().__init__()
        self.attention = BertAttention(hidden, heads)
        self.intermediate = BertIntermediate(hidden, intermediate)
        self.output = BertResidualNorm(intermediate, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attention(x)
        return self.output(self.intermediate(x), x)


class BertEncoder(nn.Module):
    """A stack of :class:`BertLayer` as ``layer.0`` ... ``layer.{n-1}``."""

    def __init__(self, layers: int, hidden: int, heads: int, intermediate: int) -> None:
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(hidden, heads, intermediate) for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layer:
            x = layer(x)
        return x


class BertModel(nn.Module):
    """BERT encoder on hidden states (B, S, hidden): no embedding tables, no pooler, no dropout."""

    def __init__(self, layers: int = 12, hidden: int = 768, heads: int = 12, intermediate: int = 3072) -> None:
        super().__init__()
        self.encoder = BertEncoder(layers, hidden, heads, intermediate)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.encoder(hidden_states)


# --------------------------------------------------------------------------- GPT-2 decoder


class GPT2Attention(nn.Module):
    """Causal multi-head attention with GPT-2's fused ``c_attn`` (Q, K, V) and ``c_proj``. With ``past`` (the
    KV cache, (2, B, H, L, D)) the new token attends to the L cached positions and itself: decode."""

    def __init__(self, hidden: int, heads: int, context: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, hidden // heads
        self.c_attn = nn.Linear(hidden, 3 * hidden)
        self.c_proj = nn.Linear(hidden, hidden)
        mask = torch.full((context, context), float("-inf")).triu(1)
        self.register_buffer("causal", mask, persistent=False)

    def forward(self, x: torch.Tensor, past: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = (t.unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2) for t in self.c_attn(x).chunk(3, -1))
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim)
        if past is None and x.shape[1] > 1:  # prefill: each position sees the ones before it
            scores = scores + self.causal[:x.shape[1], :x.shape[1]]
        context = torch.matmul(torch.softmax(scores, dim=-1), v)
        return self.c_proj(context.transpose(1, 2).flatten(-2))


class GPT2Block(nn.Module):
    """Pre-LN block: ``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))`` (c_fc, GELU, c_proj)."""

    def __init__(self, hidden: int, heads: int, context: int) -> None:
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.attn = GPT2Attention(hidden, heads, context)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(hidden, 4 * hidden))
        self.mlp.add_module("act", nn.GELU(approximate="tanh"))
        self.mlp.add_module("c_proj", nn.Linear(4 * hidden, hidden))

    def forward(self, x: torch.Tensor, past: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), past)
        return x + self.mlp(self.ln_2(x))


class GPT2(nn.Module):
    """A GPT-2-shaped decoder (random weights, built offline; GPT-2 small by default: 12 x 768, 12 heads,
    vocabulary 50257, context 1024). ``forward(ids)`` is prefill: the logits of every position.
    ``forward(ids, past)`` is one decode step: ``ids`` (B, 1) the new token, ``past`` the KV cache of every
    layer, (layers, 2, B, heads, L, head_dim); it returns the new token's logits. The LM head is a separate
    linear (GPT-2 ties it to the token table: the graph counts its weights twice, as a runtime reads both)."""

    def __init__(self, layers: int = 12, hidden: int = 768, heads: int = 12, vocab: int = 50257,
                 context: int = 1024) -> None:
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, hidden), nn.Embedding(context, hidden)
        self.h = nn.ModuleList(GPT2Block(hidden, heads, context) for _ in range(layers))
        self.ln_f = nn.LayerNorm(hidden)
        self.lm_head = nn.Linear(hidden, vocab, bias=False)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, 0, 0.02)

    def forward(self, ids: torch.Tensor, past: torch.Tensor | None = None) -> torch.Tensor:
        start = 0 if past is None else past.shape[-2]
        positions = torch.arange(start, start + ids.shape[1])
        x = self.wte(ids) + self.wpe(positions)
        for i, block in enumerate(self.h):
            x = block(x, None if past is None else past[i])
        return self.lm_head(self.ln_f(x))


def gpt2_decode_example(batch: int = 1, cached: int = 1023, layers: int = 12, heads: int = 12,
                        head_dim: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """(the new token, a KV cache of ``cached`` positions) for one decode step of :class:`GPT2`."""
    return (torch.zeros(batch, 1, dtype=torch.long), torch.randn(layers, 2, batch, heads, cached, head_dim))


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class ZooEntry:
    """One zoo model: a one-line description, its example input shape and a builder."""

    description: str
    input_shape: tuple[int, ...]
    build: Callable[[], nn.Module]
    example: Callable[[], Any] | None = None  # inputs other than one float tensor of input_shape (token ids, caches)


_CIFAR = (1, 3, 32, 32)
_IMAGENET = (1, 3, 224, 224)

ZOO: dict[str, ZooEntry] = {
    "resnet20": ZooEntry("CIFAR-10 ResNet-20, option-A shortcuts (0.27 M params)", _CIFAR, lambda: CifarResNet(3)),
    "resnet32": ZooEntry("CIFAR-10 ResNet-32, option-A shortcuts (0.46 M params)", _CIFAR, lambda: CifarResNet(5)),
    "resnet56": ZooEntry("CIFAR-10 ResNet-56, option-A shortcuts (0.85 M params)", _CIFAR, lambda: CifarResNet(9)),
    "resnet18": ZooEntry(
        "ImageNet ResNet-18, torchvision layout (11.7 M params)", _IMAGENET, lambda: ResNet(BasicBlock, [2, 2, 2, 2])
    ),
    "resnet50": ZooEntry(
        "ImageNet ResNet-50 v1.5, torchvision layout (25.6 M params)", _IMAGENET,
        lambda: ResNet(Bottleneck, [3, 4, 6, 3])
    ),
    "mobilenet_v2": ZooEntry("ImageNet MobileNetV2 1.0, torchvision layout (3.5 M params)", _IMAGENET, MobileNetV2),
    "bert_base": ZooEntry(
        "BERT-base encoder, 12 x 768 post-LN, on hidden states, seq 128 (85 M params)", (1, 128, 768), BertModel
    ),
    "gpt2_prefill": ZooEntry(
        "GPT-2-small-shaped decoder (random weights), prefill of 512 tokens (124 M params + untied LM head)",
        (1, 512), GPT2, lambda: torch.zeros(1, 512, dtype=torch.long)),
    "gpt2_decode": ZooEntry(
        "GPT-2-small-shaped decoder (random weights), one decode step after 1023 cached tokens (KV cache input)",
        (1, 1), GPT2, gpt2_decode_example),
}

#: The names ``build_model`` accepts, in listing order.
ZOO_NAMES: tuple[str, ...] = tuple(ZOO)


def load_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """Load a state_dict file into ``model`` strictly.

    Accepts a plain state_dict or a dict holding one under ``state_dict`` (as the CIFAR ResNet
    checkpoints do); a ``module.`` prefix from DataParallel is stripped. Any failure raises a
    one-line :class:`PicojouleError` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: weight file not found")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types for a corrupt or foreign file
        raise WeightsError(f"{path}: cannot read weights ({_first_line(exc)})") from exc
    state = blob.get("state_dict", blob) if isinstance(blob, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path}: expected a state_dict of tensors (optionally under 'state_dict')")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    expected = model.state_dict()
    # BatchNorm fills in a missing ``num_batches_tracked`` (older checkpoints, e.g. the CIFAR ResNets, lack it).
    missing = sorted(k for k in expected.keys() - state.keys() if not k.endswith(".num_batches_tracked"))
    unexpected = sorted(state.keys() - expected.keys())
    if missing or unexpected:
        raise WeightsError(
            f"{path}: keys do not match the model: missing {_brief(missing)}, unexpected {_brief(unexpected)}"
        )
    wrong = [f"{k} {tuple(v.shape)} != {tuple(expected[k].shape)}" for k, v in state.items()
             if v.shape != expected[k].shape]
    if wrong:
        raise WeightsError(f"{path}: tensor shapes do not match the model: {_brief(wrong)}")
    model.load_state_dict(state, strict=True)


def build_model(name: str, weights: str | os.PathLike | None = None) -> tuple[nn.Module, torch.Tensor]:
    """Build zoo model ``name`` (eval mode), optionally loading ``weights``; return it and an example input.

    The random initialisation and the example input are seeded, so repeated builds are identical.
    """
    entry = ZOO.get(name)
    if entry is None:
        raise PicojouleError(f"model: unknown zoo model {name!r}; expected one of {', '.join(ZOO_NAMES)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_INIT_SEED)
        model = entry.build()
        example = entry.example() if entry.example is not None else torch.randn(entry.input_shape)
    if weights is not None:
        load_weights(model, weights)
    return model.eval(), example


def _brief(items: list[str], limit: int = 4) -> str:
    """``items`` as a short list with their count, for a one-line message."""
    shown = ", ".join(items[:limit])
    return f"[{shown}{', ...' if len(items) > limit else ''}] ({len(items)})"


def _first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type name when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
