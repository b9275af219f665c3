"""The model zoo: named architectures built with `transformers` from config (random, seeded init),
inline specs (`llama:layers=4,hidden=256`) and local checkpoint folders.

This module does not import torch or transformers at import time, so the CLI can list and validate
models cheaply; `build_config` and `build_model` import them.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from memgauge.spec import SpecError, parse_spec


@dataclass(kw_only=True)
class ModelSpec:
    """A transformer architecture, by family, with the fields the estimator needs."""

    family: str  # "llama" | "gpt2"
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    ffn: int
    vocab: int
    max_pos: int = 2048
    tie: bool = False
    rope_theta: float = 10000.0
    checkpoint: str | None = None  # local folder with config.json (+ weights)
    name: str = ""

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise SpecError(f"model family {self.family!r} unknown; known: {', '.join(FAMILIES)}")
        for f in ("layers", "hidden", "heads", "kv_heads", "ffn", "vocab", "max_pos"):
            v = getattr(self, f)
            if not isinstance(v, int) or v <= 0:
                raise SpecError(f"model field {f} must be a positive integer, got {v!r}")
        if self.hidden % self.heads:
            raise SpecError(f"hidden ({self.hidden}) must be divisible by heads ({self.heads})")
        if self.heads % self.kv_heads:
            raise SpecError(f"heads ({self.heads}) must be divisible by kv_heads ({self.kv_heads})")
        if self.family == "gpt2" and self.kv_heads != self.heads:
            raise SpecError("gpt2 has no grouped-query attention: kv_heads must equal heads")

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    # -- the parameters, named as transformers names them ----------------------------------------
    def layer_param_shapes(self) -> dict[str, tuple[int, ...]]:
        """One decoder layer's parameters (names relative to the layer; weights (out, in) for
        Linear, (in, out) for GPT-2's Conv1D)."""
        h, f = self.hidden, self.ffn
        if self.family == "llama":
            kv = self.kv_heads * self.head_dim
            return {
                "self_attn.q_proj.weight": (h, h),
                "self_attn.k_proj.weight": (kv, h),
                "self_attn.v_proj.weight": (kv, h),
                "self_attn.o_proj.weight": (h, h),
                "mlp.gate_proj.weight": (f, h),
                "mlp.up_proj.weight": (f, h),
                "mlp.down_proj.weight": (h, f),
                "input_layernorm.weight": (h,),
                "post_attention_layernorm.weight": (h,),
            }
        return {
            "ln_1.weight": (h,),
            "ln_1.bias": (h,),
            "attn.c_attn.weight": (h, 3 * h),
            "attn.c_attn.bias": (3 * h,),
            "attn.c_proj.weight": (h, h),
            "attn.c_proj.bias": (h,),
            "ln_2.weight": (h,),
            "ln_2.bias": (h,),
            "mlp.c_fc.weight": (h, f),
            "mlp.c_fc.bias": (f,),
            "mlp.c_proj.weight": (f, h),
            "mlp.c_proj.bias": (h,),
        }

    def outer_param_shapes(self) -> dict[str, tuple[int, ...]]:
        """The parameters outside the decoder layers (a tied head is the embedding: not again)."""
        h, v = self.hidden, self.vocab
        if self.family == "llama":
            out = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,)}
        else:
            out = {
                "transformer.wte.weight": (v, h),
                "transformer.wpe.weight": (self.max_pos, h),
                "transformer.ln_f.weight": (h,),
                "transformer.ln_f.bias": (h,),
            }
        if not self.tie:
            out["lm_head.weight"] = (v, h)
        return out

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every parameter by its transformers name (tied weights once): the one description of
        the architecture that counts, sizes and per-tensor state are derived from."""
        prefix = "model.layers" if self.family == "llama" else "transformer.h"
        layer = self.layer_param_shapes()
        out = self.outer_param_shapes()
        for i in range(self.layers):
            out.update({f"{prefix}.{i}.{k}": s for k, s in layer.items()})
        return out

    def param_count(self) -> int:
        """Exact parameter count (tied weights once), from the shapes; O(1) in the layers."""
        return sum(math.prod(s) for s in self.outer_param_shapes().values()) + self.layers * sum(
            math.prod(s) for s in self.layer_param_shapes().values()
        )

    def param_tensor_count(self) -> int:
        return len(self.outer_param_shapes()) + self.layers * len(self.layer_param_shapes())

    def largest_param(self) -> int:
        """Elements of the largest parameter tensor."""
        shapes = [*self.outer_param_shapes().values(), *self.layer_param_shapes().values()]
        return max(math.prod(s) for s in shapes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


FAMILIES = ("llama", "gpt2")

# Family defaults for inline specs (fields left out take these).
_FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": dict(
        layers=4,
        hidden=256,
        heads=8,
        kv_heads=8,
        ffn=688,
        vocab=32000,
        max_pos=2048,
        tie=False,
        rope_theta=10000.0,
    ),
    "gpt2": dict(
        layers=12, hidden=768, heads=12, kv_heads=12, ffn=3072, vocab=50257, max_pos=1024, tie=True
    ),
}


@dataclass(frozen=True)
class ZooEntry:
    spec: dict[str, Any]
    about: str
    cpu_ok: bool = True  # small enough to measure on a CPU
    params: int = field(default=0)


ZOO: dict[str, ZooEntry] = {
    "llama-tiny": ZooEntry(
        dict(
            family="llama",
            layers=2,
            hidden=64,
            heads=4,
            kv_heads=2,
            ffn=176,
            vocab=512,
            max_pos=512,
        ),
        "2-layer Llama for tests (0.1M params)",
    ),
    "llama-mini": ZooEntry(
        dict(
            family="llama",
            layers=4,
            hidden=256,
            heads=8,
            kv_heads=4,
            ffn=688,
            vocab=8192,
            max_pos=1024,
        ),
        "4-layer Llama for the quick suite (7M params)",
    ),
    "llama-demo": ZooEntry(
        dict(
            family="llama",
            layers=8,
            hidden=512,
            heads=8,
            kv_heads=4,
            ffn=1376,
            vocab=32000,
            max_pos=2048,
        ),
        "8-layer Llama, the CPU demo size (56M params)",
    ),
    "gpt2-tiny": ZooEntry(
        dict(
            family="gpt2", layers=2, hidden=64, heads=4, kv_heads=4, ffn=256, vocab=512, max_pos=512
        ),
        "2-layer GPT-2 for tests",
    ),
    "gpt2": ZooEntry(
        dict(
            family="gpt2",
            layers=12,
            hidden=768,
            heads=12,
            kv_heads=12,
            ffn=3072,
            vocab=50257,
            max_pos=1024,
            tie=True,
        ),
        "GPT-2 small architecture (124M params)",
    ),
    "tinyllama-1.1b": ZooEntry(
        dict(
            family="llama",
            layers=22,
            hidden=2048,
            heads=32,
            kv_heads=4,
            ffn=5632,
            vocab=32000,
            max_pos=2048,
        ),
        "TinyLlama-1.1B architecture",
        cpu_ok=False,
    ),
    "llama-3-8b": ZooEntry(
        dict(
            family="llama",
            layers=32,
            hidden=4096,
            heads=32,
            kv_heads=8,
            ffn=14336,
            vocab=128256,
            max_pos=8192,
            rope_theta=500000.0,
        ),
        "Llama-3-8B architecture (8,030,261,248 params)",
        cpu_ok=False,
    ),
}

_SPEC_KEYS = {
    "layers",
    "hidden",
    "heads",
    "kv_heads",
    "ffn",
    "vocab",
    "max_pos",
    "tie",
    "rope_theta",
}


def _coerce_field(key: str, value: str, text: str) -> Any:
    try:
        if key == "tie":
            if value.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError
            return value.lower() in ("1", "true", "yes")
        if key == "rope_theta":
            return float(value)
        return int(value)
    except ValueError:
        raise SpecError(f"model {text!r}: {key}={value!r} is not valid") from None


def _from_checkpoint(path: str) -> ModelSpec:
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        raise SpecError(
            f"model folder {path!r} has no config.json (a Hugging Face checkpoint folder)"
        )
    try:
        with open(cfg_path, encoding="utf-8") as f:
            cfg = json.load(f)
    except json.JSONDecodeError as exc:
        raise SpecError(
            f"{cfg_path}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{cfg_path}: cannot be read ({exc})") from None
    if not isinstance(cfg, dict):
        raise SpecError(
            f"{cfg_path}: a Hugging Face config is a JSON object, got a {type(cfg).__name__}"
        )
    try:
        return _spec_from_config(cfg, path)
    except KeyError as exc:
        raise SpecError(f"{cfg_path}: lacks the key {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:
        raise SpecError(f"{cfg_path}: {exc}") from None


def _spec_from_config(cfg: dict[str, Any], path: str) -> ModelSpec:
    mt = cfg.get("model_type")
    if mt == "llama":
        heads = cfg["num_attention_heads"]
        return ModelSpec(
            family="llama",
            layers=cfg["num_hidden_layers"],
            hidden=cfg["hidden_size"],
            heads=heads,
            kv_heads=cfg.get("num_key_value_heads") or heads,
            ffn=cfg["intermediate_size"],
            vocab=cfg["vocab_size"],
            max_pos=cfg.get("max_position_embeddings", 2048),
            tie=bool(cfg.get("tie_word_embeddings", False)),
            rope_theta=float(cfg.get("rope_theta", 10000.0)),
            checkpoint=os.path.abspath(path),
            name=os.path.abspath(path),
        )
    if mt == "gpt2":
        h = cfg["n_embd"]
        return ModelSpec(
            family="gpt2",
            layers=cfg["n_layer"],
            hidden=h,
            heads=cfg["n_head"],
            kv_heads=cfg["n_head"],
            ffn=cfg.get("n_inner") or 4 * h,
            vocab=cfg["vocab_size"],
            max_pos=cfg.get("n_positions", 1024),
            tie=bool(cfg.get("tie_word_embeddings", True)),
            checkpoint=os.path.abspath(path),
            name=os.path.abspath(path),
        )
    raise SpecError(f"checkpoint {path!r}: model_type {mt!r} not supported (llama, gpt2)")


def resolve_model(text: str) -> ModelSpec:
    """A zoo name, a local checkpoint folder, or an inline spec -> ModelSpec (validated)."""
    text = text.strip()
    if text in ZOO:
        return ModelSpec(name=text, **ZOO[text].spec)
    if os.path.isdir(text):
        return _from_checkpoint(text)
    if os.path.exists(text):
        raise SpecError(
            f"model {text!r} is a file; give the checkpoint folder that holds config.json"
        )
    if text.startswith((".", "/", "~")) or os.sep in text.split(":", 1)[0]:
        raise SpecError(
            f"model folder {text!r} does not exist; give a zoo name ({', '.join(ZOO)}), an "
            f"existing checkpoint folder, or an inline spec like llama:layers=4,hidden=256"
        )
    family, opts = parse_spec(text)
    if family not in _FAMILY_DEFAULTS or (":" not in text and family not in ZOO):
        raise SpecError(
            f"unknown model {text!r}: use a zoo name ({', '.join(ZOO)}), a local checkpoint "
            f"folder, or an inline spec like llama:layers=4,hidden=256,heads=8"
        )
    unknown = sorted(set(opts) - _SPEC_KEYS)
    if unknown:
        raise SpecError(
            f"model {text!r}: unknown field(s) {', '.join(unknown)}; "
            f"valid: {', '.join(sorted(_SPEC_KEYS))}"
        )
    fields_ = dict(_FAMILY_DEFAULTS[family])
    fields_.update({k: _coerce_field(k, v, text) for k, v in opts.items()})
    if "heads" in opts and "kv_heads" not in opts and family == "llama":
        fields_["kv_heads"] = fields_["heads"]
    if family == "gpt2":
        fields_["kv_heads"] = fields_["heads"]
    canonical = family + ":" + ",".join(f"{k}={fields_[k]}" for k in sorted(fields_))
    return ModelSpec(family=family, name=canonical, **fields_)


def build_config(spec: ModelSpec, *, attn_implementation: str = "sdpa") -> Any:
    """The transformers config for a spec."""
    if spec.family == "llama":
        from transformers import LlamaConfig

        cfg = LlamaConfig(
            vocab_size=spec.vocab,
            hidden_size=spec.hidden,
            intermediate_size=spec.ffn,
            num_hidden_layers=spec.layers,
            num_attention_heads=spec.heads,
            num_key_value_heads=spec.kv_heads,
            max_position_embeddings=spec.max_pos,
            rope_theta=spec.rope_theta,
            tie_word_embeddings=spec.tie,
        )
    else:
        from transformers import GPT2Config

        cfg = GPT2Config(
            vocab_size=spec.vocab,
            n_embd=spec.hidden,
            n_layer=spec.layers,
            n_head=spec.heads,
            n_inner=spec.ffn,
            n_positions=spec.max_pos,
            tie_word_embeddings=spec.tie,
            # dropout is off: measurements must be deterministic and comparable
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        )
    cfg._attn_implementation = attn_implementation
    return cfg


def build_model(
    spec: ModelSpec, *, device: Any, dtype: Any, seed: int, attn_implementation: str = "sdpa"
) -> Any:
    """Build the model on `device` in `dtype`, random-init from `seed` or loaded from a folder."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    if spec.checkpoint:
        model = AutoModelForCausalLM.from_pretrained(
            spec.checkpoint,
            dtype=dtype,
            attn_implementation=attn_implementation,
            local_files_only=True,
        )
        return model.to(device)
    cfg = build_config(spec, attn_implementation=attn_implementation)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    return model
