"""Name and config mapping between our (official) backbone layout and Hugging Face ``Dinov2Model`` /
``Dinov2WithRegistersModel``, without importing transformers.

The hub's tensor names (what :func:`to_hf` writes; transformers 4 and 5 both load them):
``embeddings.{cls_token, mask_token, register_tokens, position_embeddings,
patch_embeddings.projection}``, ``encoder.layer.{i}.{norm1, norm2, layer_scale1.lambda1,
layer_scale2.lambda1}``, ``attention.attention.{query,key,value}`` (our fused ``attn.qkv`` split in
three), ``attention.output.dense``, ``mlp.fc1/fc2`` or ``mlp.weights_in/weights_out`` (SwiGLU),
``layernorm``. transformers 5 renames these in memory (``attention.q_proj``, ``mlp.gate_proj`` +
``up_proj``); :func:`from_hf` reads both.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pretrain.models.io_files import CheckpointError, load_torch, read_json, read_safetensors
from pretrain.models.layers import swiglu_hidden

# ours (official) -> hub, per block; the qkv split and SwiGLU are handled apart
_BLOCK = {
    "norm1": "norm1",
    "norm2": "norm2",
    "attn.proj": "attention.output.dense",
    "ls1.gamma": "layer_scale1.lambda1",
    "ls2.gamma": "layer_scale2.lambda1",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    "mlp.w12": "mlp.weights_in",
    "mlp.w3": "mlp.weights_out",
}
_TOP = {
    "cls_token": "embeddings.cls_token",
    "mask_token": "embeddings.mask_token",
    "register_tokens": "embeddings.register_tokens",
    "pos_embed": "embeddings.position_embeddings",
    "patch_embed.proj": "embeddings.patch_embeddings.projection",
    "norm": "layernorm",
}
# transformers 5 in-memory names -> hub names
_V5 = {
    "attention.q_proj": "attention.attention.query",
    "attention.k_proj": "attention.attention.key",
    "attention.v_proj": "attention.attention.value",
    "attention.o_proj": "attention.output.dense",
    "mlp.down_proj": "mlp.weights_out",
}


def _split_param(name: str) -> tuple[str, str]:
    """``"blocks.0.attn.qkv.weight"`` -> (``"blocks.0.attn.qkv"``, ``".weight"``); others: (name, "")."""
    for suffix in (".weight", ".bias"):
        if name.endswith(suffix):
            return name[: -len(suffix)], suffix
    return name, ""


def to_hf(state: dict[str, Tensor], arch: dict[str, Any]) -> dict[str, Tensor]:
    """Our state dict -> hub-named tensors. Absent pieces that HF always has are filled neutrally:
    LayerScale 1 when ours has none, zero biases where ours has none."""
    dim = arch["embed_dim"]
    out: dict[str, Tensor] = {}
    for name, value in state.items():
        base, suffix = _split_param(name)
        m = re.match(r"^blocks\.(\d+)\.(.+)$", base)
        if m is None:
            out[_TOP[base] + suffix] = value
            continue
        prefix, rest = f"encoder.layer.{m.group(1)}.", m.group(2)
        if rest == "attn.qkv":
            for part, chunk in zip(("query", "key", "value"), value.chunk(3, dim=0), strict=True):
                out[f"{prefix}attention.attention.{part}{suffix}"] = chunk.clone()
        else:
            out[prefix + _BLOCK[rest] + suffix] = value
    depth = arch["depth"]
    ffn = ("weights_in", "weights_out") if arch.get("ffn_layer", "mlp") != "mlp" else ("fc1", "fc2")
    for i in range(depth):
        p = f"encoder.layer.{i}."
        for j in (1, 2):
            out.setdefault(f"{p}layer_scale{j}.lambda1", torch.ones(dim))
        for part in ("query", "key", "value"):
            w = out[f"{p}attention.attention.{part}.weight"]
            out.setdefault(f"{p}attention.attention.{part}.bias", torch.zeros(w.shape[0], dtype=w.dtype))
        for lin in ("attention.output.dense", f"mlp.{ffn[0]}", f"mlp.{ffn[1]}"):
            w = out[f"{p}{lin}.weight"]
            out.setdefault(f"{p}{lin}.bias", torch.zeros(w.shape[0], dtype=w.dtype))
    return out


def hf_config(arch: dict[str, Any]) -> dict[str, Any]:
    """``config.json`` for ``arch``: Dinov2Model, or Dinov2WithRegistersModel with register tokens.
    Our interpolation mode and bias flags go under the ``dinoflow`` key (transformers keeps it)."""
    regs = arch.get("num_register_tokens", 0)
    ratio = float(arch.get("mlp_ratio", 4.0))
    if not ratio.is_integer():
        raise ValueError(f"transformers' Dinov2Config needs an integer mlp_ratio, the model has {ratio}")
    config: dict[str, Any] = {
        "architectures": ["Dinov2WithRegistersModel" if regs else "Dinov2Model"],
        "model_type": "dinov2_with_registers" if regs else "dinov2",
        "hidden_size": arch["embed_dim"],
        "num_hidden_layers": arch["depth"],
        "num_attention_heads": arch["num_heads"],
        "mlp_ratio": int(ratio),
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "initializer_range": 0.02,
        "layer_norm_eps": 1e-6,
        "image_size": arch["img_size"],
        "patch_size": arch["patch_size"],
        "num_channels": arch.get("in_chans", 3),
        "qkv_bias": True,  # absent biases are written as zeros
        "layerscale_value": arch.get("layerscale_init") or 1.0,
        "drop_path_rate": 0.0,
        "use_swiglu_ffn": arch.get("ffn_layer", "mlp") != "mlp",
        "use_mask_token": True,
        "dinoflow": {k: arch[k] for k in ("interpolate_antialias", "interpolate_offset") if k in arch},
    }
    if regs:
        config["num_register_tokens"] = regs
    return config


def read_hf_state(path: str | Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """``(config, tensors)`` of an HF model directory (``model.safetensors``, a sharded
    ``model.safetensors.index.json`` or ``pytorch_model.bin``)."""
    path = Path(path)
    config = read_json(path / "config.json")
    if not isinstance(config, dict):
        raise CheckpointError(
            f"{path / 'config.json'}: expected a JSON object; found {type(config).__name__}"
        )
    if (path / "model.safetensors").exists():
        state = read_safetensors(path / "model.safetensors")[0]
    elif (path / "model.safetensors.index.json").exists():
        index = read_json(path / "model.safetensors.index.json")
        state = {}
        for shard in sorted(set(index.get("weight_map", {}).values())):
            if not (path / shard).is_file():
                raise CheckpointError(f"{path}: the shard index names {shard}, which is missing")
            state.update(read_safetensors(path / shard)[0])
    elif (path / "pytorch_model.bin").exists():
        state = load_torch(path / "pytorch_model.bin")
        if not isinstance(state, dict):
            raise CheckpointError(
                f"{path / 'pytorch_model.bin'}: expected a state dict; found {type(state).__name__}"
            )
    else:
        raise CheckpointError(f"{path}: no model.safetensors, shard index or pytorch_model.bin")
    return config, state


def _hub_names(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """transformers 5 names (and a ``dinov2.`` model prefix) -> hub names; SwiGLU gate/up fused back."""
    out: dict[str, Tensor] = {}
    for name, value in state.items():
        name = re.sub(r"^(dinov2|dinov2_with_registers)\.", "", name)
        for new, old in _V5.items():
            name = name.replace(new, old)
        out[name] = value
    for name in [k for k in out if ".mlp.gate_proj." in k]:
        up = name.replace("gate_proj", "up_proj")
        out[name.replace("gate_proj", "weights_in")] = torch.cat([out.pop(name), out.pop(up)])
    return out


def from_hf(config: dict[str, Any], hf_state: dict[str, Tensor]) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """HF config and tensors -> (our constructor arguments, our state dict). Unknown names are kept
    under their HF name, so the strict load reports them."""
    if config.get("model_type") not in ("dinov2", "dinov2_with_registers"):
        raise ValueError(
            "expected a Hugging Face Dinov2 model (config.json model_type dinov2 or dinov2_with_registers); "
            f"found model_type {config.get('model_type')!r}"
        )
    hub = _hub_names(hf_state)
    inverse_top = {v: k for k, v in _TOP.items()}
    inverse_block = {v: k for k, v in _BLOCK.items()}
    state: dict[str, Tensor] = {}
    qkv: dict[str, dict[str, Tensor]] = {}
    for name, value in hub.items():
        m = re.match(r"^encoder\.layer\.(\d+)\.(.+?)(\.weight|\.bias|\.lambda1)?$", name)
        if m is None:
            base, suffix = _split_param(name)
            state[inverse_top[base] + suffix if base in inverse_top else name] = value
            continue
        i, rest, suffix = m.group(1), m.group(2), m.group(3) or ""
        part = re.match(r"^attention\.attention\.(query|key|value)$", rest)
        if part:
            qkv.setdefault(f"blocks.{i}.attn.qkv{suffix}", {})[part.group(1)] = value
        elif rest + suffix in ("layer_scale1.lambda1", "layer_scale2.lambda1"):
            state[f"blocks.{i}.ls{rest[11]}.gamma"] = value
        elif rest in inverse_block:
            state[f"blocks.{i}.{inverse_block[rest]}{suffix}"] = value
        else:
            state[name] = value
    for name, parts in qkv.items():
        state[name] = torch.cat([parts["query"], parts["key"], parts["value"]])
    try:
        return _arch_from_config(config), state
    except KeyError as exc:
        raise ValueError(f"config.json has no {exc.args[0]!r}, which a Dinov2 config always has") from None


def _arch_from_config(config: dict[str, Any]) -> dict[str, Any]:
    patch = config.get("patch_size", 14)
    size = config.get("image_size", 224)
    if isinstance(patch, list | tuple) or isinstance(size, list | tuple):
        raise ValueError("non-square image_size/patch_size in config.json are not supported")
    regs = config.get("num_register_tokens", 0) if config["model_type"] == "dinov2_with_registers" else 0
    swiglu = bool(config.get("use_swiglu_ffn", False))
    dim, ratio = config["hidden_size"], config.get("mlp_ratio", 4)
    if swiglu and swiglu_hidden(int(dim * ratio)) <= 0:
        raise ValueError(f"bad SwiGLU width for hidden_size {dim}, mlp_ratio {ratio}")
    # HF's own resize: exact size, antialiased only in the register model
    interp = {"interpolate_antialias": bool(regs), "interpolate_offset": 0.0, **config.get("dinoflow", {})}
    return dict(
        img_size=size, patch_size=patch, in_chans=config.get("num_channels", 3), embed_dim=dim,
        depth=config["num_hidden_layers"], num_heads=config["num_attention_heads"], mlp_ratio=float(ratio),
        qkv_bias=True, proj_bias=True, ffn_bias=True, layerscale_init=config.get("layerscale_value", 1.0),
        ffn_layer="swiglufused" if swiglu else "mlp", num_register_tokens=regs, **interp,
    )  # fmt: skip
