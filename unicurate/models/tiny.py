"""The ``tiny`` profile's builders: every model's own class with small shapes and seeded random weights.

The zoo names the tiny models (``tiny://`` URIs, :data:`~unicurate.models.zoo.TINY_CLIP_ARCH`); the loaders
call these builders for them. Nothing here is calibrated: it exercises every code path (tests, CI, the offline
demo) at the cost of a toy. The same seed always gives the same weights, so a tiny model's fingerprint
(:func:`state_dict_sha256`) is stable across processes and machines.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np

from unicurate.models.resolver import default_cache_dir

if TYPE_CHECKING:
    from unicurate.models.zoo import ModelSpec


@contextlib.contextmanager
def seeded(seed: int):
    """torch's CPU generator seeded for the block, and restored after it (a build never shifts other randomness)."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        yield


def state_dict_sha256(module) -> str:
    """A stable fingerprint of a module's weights (for tiny models, which have no file)."""
    sha = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        sha.update(name.encode())
        sha.update(tensor.detach().cpu().contiguous().float().numpy().tobytes())
    return sha.hexdigest()


# ------------------------------------------------------------------ CLIP (open_clip)
CLIP_CONFIG = {
    "embed_dim": 64,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def register_clip(arch: str) -> None:
    """Make the tiny CLIP architecture known to open_clip under ``arch`` (open_clip's own registry remembers it)."""
    import open_clip

    if arch in open_clip.list_models():
        return
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"{arch}.json"
        path.write_text(json.dumps(CLIP_CONFIG))
        open_clip.add_model_config(path)


# ------------------------------------------------------------------ LAION CLIP-based NSFW head (ONNX)
def nsfw_onnx(input_dim: int, hidden: Sequence[int], seed: int) -> bytes:
    """An ONNX MLP (MatMul/Add/Relu ... Sigmoid) with seeded random weights: the tiny NSFW head."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    dims = [input_dim, *hidden, 1]
    nodes, inits = [], []
    x = "embedding"
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        w = (rng.standard_normal((a, b)) * np.sqrt(2.0 / a)).astype(np.float32)
        bias = (rng.standard_normal(b) * 0.1).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(bias, f"b{i}")]
        nodes += [helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"]),
                  helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"])]
        x = f"a{i}"
        if i < len(dims) - 2:
            nodes.append(helper.make_node("Relu", [x], [f"r{i}"]))
            x = f"r{i}"
    nodes.append(helper.make_node("Sigmoid", [x], ["nsfw"]))
    graph = helper.make_graph(nodes, "tiny_nsfw_head",
                              [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", input_dim])],
                              [helper.make_tensor_value_info("nsfw", TensorProto.FLOAT, ["N", 1])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="unicurate")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


# ------------------------------------------------------------------ watermark detector (timm)
def seed_batchnorm(model, size: int, seed: int, mean: Sequence[float], std: Sequence[float]) -> None:
    """Set BatchNorm running statistics from seeded noise images (normalised with ``mean``/``std``).

    With untouched running stats (mean 0, var 1) a random EfficientNet's output
    is the same for every input; seeded statistics keep the tiny model
    input-dependent (still random, still uncalibrated).
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    noise = torch.rand((16, 3, size, size), generator=gen)
    noise = (noise - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration passes
    model.train()
    with torch.no_grad():
        for chunk in noise.split(4):
            model(chunk)
    model.eval()


# ------------------------------------------------------------------ GroundingDINO's text encoder (BERT)
BERT_WORDS = (
    "a an the of on in with and at to from by for is are this that there his her its their some two three "
    "red orange yellow green blue purple pink black white gray grey brown dark light bright small large big "
    "circle square triangle rectangle oval star shape shapes photo picture image drawing sign text background "
    "gradient sky tree dog cat person man woman car house flower bird cup table chair ball book bottle "
    "left right top bottom middle center near next behind front over under sideways taken transparent cut out"
).split()


def bert_dir(spec: "ModelSpec", cache_dir: Optional[str] = None) -> Path:
    """Write (once) a seeded random BERT + word-piece vocab in the model cache; return its folder.

    transformers reads a text encoder from a folder, so this tiny model lives on disk (written atomically:
    concurrent workers keep whichever copy lands first).
    """
    from transformers import BertConfig, BertModel, BertTokenizer

    opts = spec.options
    tag = f"bert-L{opts.get('layers', 2)}-H{opts.get('hidden', 64)}-s{opts.get('seed', 0)}-v1"
    root = Path(cache_dir or default_cache_dir()) / "tiny" / tag
    if (root / ".complete").is_file():
        return root
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "?", ",", "!", ":", "'", "-"]
    vocab += list("0123456789abcdefghijklmnopqrstuvwxyz")
    vocab += [f"##{c}" for c in "0123456789abcdefghijklmnopqrstuvwxyz"]
    vocab += [w for w in dict.fromkeys(BERT_WORDS) if w not in vocab]
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{uuid.uuid4().hex[:8]}-", dir=root.parent))
    try:
        (tmp / "vocab.txt").write_text("\n".join(vocab) + "\n")
        tok = BertTokenizer(str(tmp / "vocab.txt"), do_lower_case=True)
        cfg = BertConfig(vocab_size=len(vocab), hidden_size=int(opts.get("hidden", 64)),
                         num_hidden_layers=int(opts.get("layers", 2)),
                         num_attention_heads=max(2, int(opts.get("hidden", 64)) // 64),
                         intermediate_size=4 * int(opts.get("hidden", 64)), max_position_embeddings=512)
        with seeded(int(opts.get("seed", 0))):
            model = BertModel(cfg)
        model.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        (tmp / ".complete").write_text("tiny random BERT for unicurate's tiny profile (uncalibrated)\n")
        try:
            os.replace(tmp, root)
        except OSError:  # another process won the race: use its copy
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        if tmp.exists() and tmp != root:
            shutil.rmtree(tmp, ignore_errors=True)
    return root


# ------------------------------------------------------------------ GroundingDINO
GROUNDING_DINO_ARGS = dict(
    backbone="swin_T_224_1k", enc_layers=1, dec_layers=1, dim_feedforward=512, hidden_dim=256, nheads=8,
    num_queries=100, use_checkpoint=False, use_transformer_ckpt=False, fusion_droppath=0.0,
)
"""Overrides of the package's SwinT-OGC config: the same classes, a 1+1-layer transformer."""


# ------------------------------------------------------------------ SAM
SAM_SHAPE = dict(embed_dim=64, depth=2, heads=2, global_attn=[1], img_size=256, prompt_dim=64, window=8)


def sam(seed: int):
    """segment-anything's ``Sam`` class with a 2-layer 64-d ViT at 256 px, seeded random weights."""
    from functools import partial

    import torch
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    t = SAM_SHAPE
    emb = t["img_size"] // 16
    with seeded(seed):
        return Sam(
            image_encoder=ImageEncoderViT(
                depth=t["depth"], embed_dim=t["embed_dim"], img_size=t["img_size"], mlp_ratio=4,
                norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=t["heads"], patch_size=16,
                qkv_bias=True, use_rel_pos=True, global_attn_indexes=t["global_attn"], window_size=t["window"],
                out_chans=t["prompt_dim"]),
            prompt_encoder=PromptEncoder(embed_dim=t["prompt_dim"], image_embedding_size=(emb, emb),
                                         input_image_size=(t["img_size"], t["img_size"]), mask_in_chans=16),
            mask_decoder=MaskDecoder(num_multimask_outputs=3,
                                     transformer=TwoWayTransformer(depth=2, embedding_dim=t["prompt_dim"],
                                                                   mlp_dim=256, num_heads=2),
                                     transformer_dim=t["prompt_dim"], iou_head_depth=3, iou_head_hidden_dim=64),
            pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375],
        )
