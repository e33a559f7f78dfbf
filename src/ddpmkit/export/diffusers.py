"""Runs as diffusers pipelines and back: a ddpmkit UNet is a ``UNet2DModel`` with other parameter names.

The two networks are the same DDPM UNet (Ho et al. 2020, appendix B) when ddpmkit's options are ones diffusers has:

    ddpmkit UNetConfig                      diffusers UNet2DModel config
    base_channels · channel_mults           block_out_channels (channel_mults[0] must be 1: conv_in's width)
    num_res_blocks                          layers_per_block
    attention_resolutions (per level)       AttnDownBlock2D / AttnUpBlock2D at those levels, else Down/UpBlock2D
    mid_attention                           add_attention
    num_heads (same head width everywhere)  attention_head_dim = width / heads   (None: one head per block)
      or head_channels                      attention_head_dim
    time_conditioning scale_shift/additive  resnet_time_scale_shift scale_shift/default
    time_embedding_order, time_freq_shift   flip_sin_to_cos (cos_sin), freq_shift
    norm_groups, dropout, image_size        norm_num_groups, dropout, sample_size
    num_classes (+ a null class)            num_class_embeds = num_classes + 1 (index num_classes: no class)

and the parameters are renamed one for one (``time_mlp.0`` ↔ ``time_embedding.linear_1``, ``down.<k>.0`` ↔
``down_blocks.<level>.resnets.<j>``, ``emb_proj`` ↔ ``time_emb_proj``, ``skip`` ↔ ``conv_shortcut``, attention
``norm`` ↔ ``group_norm``, ``to_out`` ↔ ``to_out.0``, …; :func:`parameter_names`). What diffusers cannot express
is refused with one line naming the feature: labels as cross-attention tokens, a learned variance, a first level
wider than the stem, attention heads of different widths, an image size the levels do not divide.

The noise process is written as a ``DDPMScheduler`` config: the run's exact β_t as ``trained_betas`` (with the
schedule's name beside them), its prediction type, variance and clipping. Nothing here imports diffusers: the
files are JSON and safetensors, and ``diffusers.DDPMPipeline.from_pretrained(DIR)`` reads them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..atomic import atomic_write_text, fsync_dir
from ..checkpoint import load_checkpoint, save_checkpoint
from ..config import RunConfig
from ..diffusion import Diffusion
from ..errors import DdpmkitError
from ..models import UNetConfig
from ..run import RunFolder, RunInfo
from ..schedule import SCHEDULE_KINDS, NoiseSchedule

DIFFUSERS_VERSION = "0.30.0"  # the oldest diffusers these files are written for (UNet2DModel's `dropout`)
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
PREDICTIONS = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}
# The UNet2DModel settings ddpmkit's UNet always has; an imported config must have them too.
FIXED = {"center_input_sample": False, "time_embedding_type": "positional", "time_embedding_dim": None,
         "mid_block_type": "UNetMidBlock2D", "mid_block_scale_factor": 1, "downsample_padding": 1,
         "downsample_type": "conv", "upsample_type": "conv", "act_fn": "silu", "norm_eps": 1e-05,
         "class_embed_type": None, "num_train_timesteps": None}
NULL_CLASS_KEY = "ddpmkit_null_class"  # written beside num_class_embeds: its last index is "no class"


# ----- the UNet's configuration --------------------------------------------------------------------------------

def attention_levels(unet: UNetConfig) -> list[bool]:
    """Whether each level has self-attention."""
    return [r in unet.attention_resolutions for r in unet.level_resolutions()]


def unet2d_config(unet: UNetConfig) -> dict[str, Any]:
    """The ``UNet2DModel`` config of the same network, or a one-line error naming what diffusers lacks."""
    if unet.num_classes is not None and unet.conditioning != "embedding":
        raise DdpmkitError(f"labels as cross-attention tokens (conditioning={unet.conditioning}) have no UNet2DModel "
                           "equivalent; only label embeddings (conditioning=embedding) export")
    if unet.cross_attention_resolutions:
        raise DdpmkitError("cross-attention blocks have no UNet2DModel equivalent; this run cannot be exported")
    if unet.learn_sigma:
        raise DdpmkitError("a learned variance (diffusion.variance=learned_range) does not export: diffusers' "
                           "DDPMPipeline would misread the extra output channels")
    if unet.channel_mults[0] != 1:
        raise DdpmkitError(f"channel_mults {list(unet.channel_mults)} start above 1: UNet2DModel's stem has the "
                           "first level's width; only channel_mults starting with 1 export")
    if unet.image_size % 2 ** (len(unet.channel_mults) - 1):
        raise DdpmkitError(f"{unet.image_size}px does not halve {len(unet.channel_mults) - 1} times without a "
                           "remainder: ddpmkit pads such inputs, UNet2DModel cannot")
    widths = [unet.base_channels * m for m in unet.channel_mults]
    attended = [w for w, a in zip(widths, attention_levels(unet)) if a] + ([widths[-1]] if unet.mid_attention else [])
    if unet.head_channels is not None:
        head_dim = unet.head_channels
    elif unet.num_heads == 1:
        head_dim = None  # UNet2DModel: one head as wide as its block
    else:
        dims = {w // unet.num_heads for w in attended}
        if len(dims) > 1:
            raise DdpmkitError(f"{unet.num_heads} heads at widths {sorted(set(attended))} are heads of different "
                               "widths; UNet2DModel has one head width (set model.head_channels to train one)")
        head_dim = dims.pop() if dims else None
    levels = attention_levels(unet)
    config = {
        "_class_name": "UNet2DModel", "_diffusers_version": DIFFUSERS_VERSION,
        "sample_size": unet.image_size, "in_channels": unet.in_channels, "out_channels": unet.resolved_out_channels,
        "freq_shift": unet.time_freq_shift, "flip_sin_to_cos": unet.time_embedding_order == "cos_sin",
        "down_block_types": ["AttnDownBlock2D" if a else "DownBlock2D" for a in levels],
        "up_block_types": ["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(levels)],
        "block_out_channels": widths, "layers_per_block": unet.num_res_blocks, "dropout": unet.dropout,
        "attention_head_dim": head_dim, "norm_num_groups": unet.norm_groups,
        "resnet_time_scale_shift": "scale_shift" if unet.time_conditioning == "scale_shift" else "default",
        "add_attention": unet.mid_attention,
        # UNetMidBlock2D leaves its attention unnormalised with scale-shift ResBlocks unless told the groups
        "attn_norm_num_groups": unet.norm_groups if mid_norm_needs_groups(unet) else None,
        "num_class_embeds": unet.num_classes + 1 if unet.num_classes is not None else None, **FIXED}
    if unet.num_classes is not None:
        config[NULL_CLASS_KEY] = True
    return config


def mid_norm_needs_groups(unet: UNetConfig) -> bool:
    """Whether UNet2DModel must be told ``attn_norm_num_groups`` to give its middle attention ddpmkit's GroupNorm
    (it normalises there on its own only with additive time conditioning)."""
    return unet.mid_attention and unet.time_conditioning == "scale_shift"


def unet_config_from(config: dict[str, Any]) -> UNetConfig:
    """The ddpmkit UNet of a ``UNet2DModel`` config, or a one-line error naming what ddpmkit's UNet lacks."""
    if config.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise DdpmkitError(f"config.json describes a {config['_class_name']}, not a UNet2DModel")
    for key, want in FIXED.items():
        if key in config and config[key] != want and not (key == "mid_block_scale_factor" and config[key] == 1.0):
            raise DdpmkitError(f"{key}={config[key]!r} has no ddpmkit equivalent (ddpmkit's UNet has {want!r})")
    down, up = list(config.get("down_block_types", [])), list(config.get("up_block_types", []))
    levels = [kind == "AttnDownBlock2D" for kind in down]
    unknown = sorted({k for k in down if k not in ("DownBlock2D", "AttnDownBlock2D")}
                     | {k for k in up if k not in ("UpBlock2D", "AttnUpBlock2D")})
    if unknown:
        raise DdpmkitError(f"block types {unknown} have no ddpmkit equivalent (ddpmkit has DownBlock2D, "
                           "AttnDownBlock2D, UpBlock2D, AttnUpBlock2D)")
    if [kind == "AttnUpBlock2D" for kind in reversed(up)] != levels:
        raise DdpmkitError("the up blocks' attention does not mirror the down blocks'; ddpmkit's UNet is symmetric")
    widths = list(config["block_out_channels"])
    base = widths[0]
    if any(w % base for w in widths) or len(widths) != len(down):
        raise DdpmkitError(f"block_out_channels {widths} are not multiples of the first, one per block")
    size = config.get("sample_size") or 32
    if not isinstance(size, int):
        raise DdpmkitError(f"sample_size {size!r} is not square; ddpmkit's UNet takes square images")
    in_channels, out_channels = config.get("in_channels", 3), config.get("out_channels", 3)
    if out_channels != in_channels:
        raise DdpmkitError(f"out_channels={out_channels} differs from in_channels={in_channels}: a learned variance "
                           "or another output does not import")
    head_dim = config.get("attention_head_dim", 8)
    num_classes = config.get("num_class_embeds")
    if num_classes is not None and not config.get(NULL_CLASS_KEY):
        raise DdpmkitError("a class-conditional UNet2DModel without a null class cannot serve classifier-free "
                           "guidance as ddpmkit's does; only class-conditional models exported by ddpmkit import")
    resolutions = [size // 2**lvl for lvl in range(len(widths))]
    groups, mid_groups = config.get("norm_num_groups", 32), config.get("attn_norm_num_groups")
    scale_shift = config.get("resnet_time_scale_shift", "default") == "scale_shift"
    if config.get("add_attention", True) and (mid_groups or (None if scale_shift else groups)) != groups:
        raise DdpmkitError(f"the middle attention's GroupNorm (attn_norm_num_groups={mid_groups}) differs from the "
                           f"blocks' ({groups}); ddpmkit's UNet uses one norm_groups")
    return UNetConfig(
        image_size=size, in_channels=in_channels, base_channels=base,
        channel_mults=tuple(w // base for w in widths), num_res_blocks=config.get("layers_per_block", 2),
        attention_resolutions=tuple(r for r, a in zip(resolutions, levels) if a),
        num_heads=1, head_channels=head_dim, dropout=float(config.get("dropout", 0.0)),
        time_conditioning="scale_shift" if scale_shift else "additive",
        num_classes=num_classes - 1 if num_classes is not None else None,
        norm_groups=groups, mid_attention=config.get("add_attention", True),
        time_embedding_order="cos_sin" if config.get("flip_sin_to_cos", True) else "sin_cos",
        time_freq_shift=int(config.get("freq_shift", 0)))


# ----- the parameters -------------------------------------------------------------------------------------------

def parameter_names(unet: UNetConfig) -> dict[str, str]:
    """ddpmkit module prefix → diffusers module prefix, for every module with parameters (in forward order)."""
    names = {"time_mlp.0": "time_embedding.linear_1", "time_mlp.2": "time_embedding.linear_2", "conv_in": "conv_in"}
    if unet.num_classes is not None:
        names["label_emb.embedding"] = "class_embedding"
    levels, last = attention_levels(unet), len(unet.channel_mults) - 1
    stage = 0
    for lvl in range(last + 1):
        for j in range(unet.num_res_blocks):
            names[f"down.{stage}.0"] = f"down_blocks.{lvl}.resnets.{j}"
            if levels[lvl]:
                names[f"down.{stage}.1"] = f"down_blocks.{lvl}.attentions.{j}"
            stage += 1
        if lvl != last:
            names[f"down.{stage}.0"] = f"down_blocks.{lvl}.downsamplers.0"
            stage += 1
    mid = ["mid_block.resnets.0"] + (["mid_block.attentions.0"] if unet.mid_attention else []) + ["mid_block.resnets.1"]
    names.update({f"mid.{k}": name for k, name in enumerate(mid)})
    stage = 0
    for block, lvl in enumerate(range(last, -1, -1)):
        for j in range(unet.num_res_blocks + 1):
            names[f"up.{stage}.0"] = f"up_blocks.{block}.resnets.{j}"
            if levels[lvl]:
                names[f"up.{stage}.1"] = f"up_blocks.{block}.attentions.{j}"
            if lvl and j == unet.num_res_blocks:
                names[f"up.{stage}.{1 + levels[lvl]}"] = f"up_blocks.{block}.upsamplers.0"
            stage += 1
    names.update({"norm_out": "conv_norm_out", "conv_out": "conv_out"})
    return names


# inside a block: ResBlock and attention parameter names that differ
_INNER = {"emb_proj": "time_emb_proj", "skip": "conv_shortcut", "norm": "group_norm", "to_out": "to_out.0"}


def to_diffusers_state_dict(state: dict[str, torch.Tensor], unet: UNetConfig) -> dict[str, torch.Tensor]:
    """ddpmkit UNet weights under UNet2DModel's parameter names (the same tensors)."""
    prefixes = parameter_names(unet)
    out = {}
    for key, value in state.items():
        module, _, leaf = key.rpartition(".")
        prefix = max((p for p in prefixes if module == p or module.startswith(p + ".")), key=len, default=None)
        if prefix is None:
            raise DdpmkitError(f"parameter {key} has no UNet2DModel counterpart")
        inner = module[len(prefix) + 1:] if module != prefix else ""
        inner = ".".join(_INNER.get(part, part) for part in inner.split(".")) if inner else ""
        out[".".join(p for p in (prefixes[prefix], inner, leaf) if p)] = value
    return out


def from_diffusers_state_dict(state: dict[str, torch.Tensor], unet: UNetConfig) -> dict[str, torch.Tensor]:
    """UNet2DModel weights under ddpmkit's names; missing or extra parameters are a one-line error."""
    from ..models import UNet

    with torch.device("meta"):  # the names and shapes only, no memory
        ours = UNet(unet).state_dict()
    names = to_diffusers_state_dict(ours, unet)
    back = {theirs: mine for mine, theirs in zip(ours, names)}
    missing = sorted(set(back) - set(state))
    extra = sorted(set(state) - set(back))
    if missing or extra:
        raise DdpmkitError(f"the weights do not fit the UNet their config.json describes (missing {missing[:3]}, "
                           f"unexpected {extra[:3]})")
    converted = {back[name]: tensor for name, tensor in state.items()}
    for name, tensor in converted.items():
        if tensor.shape != ours[name].shape:
            raise DdpmkitError(f"{name} has shape {tuple(tensor.shape)}, the config says {tuple(ours[name].shape)}")
    return converted


# ----- the noise process ----------------------------------------------------------------------------------------

def scheduler_config(diffusion: Diffusion, spacing: str = "trailing") -> dict[str, Any]:
    """A ``DDPMScheduler`` config with the run's exact β_t, prediction, variance and clipping."""
    if diffusion.learns_variance:
        raise DdpmkitError("a learned variance (diffusion.variance=learned_range) does not export")
    schedule = diffusion.schedule
    named = {"linear": "linear", "cosine": "squaredcos_cap_v2", "sigmoid": "sigmoid"}.get(schedule.kind, "linear")
    return {
        "_class_name": "DDPMScheduler", "_diffusers_version": DIFFUSERS_VERSION,
        "num_train_timesteps": schedule.num_steps, "beta_schedule": named,
        "beta_start": float(schedule.params.get("beta_start", 1e-4)),
        "beta_end": float(schedule.params.get("beta_end", 0.02)),
        "trained_betas": schedule.betas.tolist(),  # exact: diffusers uses these instead of its own formula
        "variance_type": diffusion.variance.value, "clip_sample": bool(diffusion.clip_denoised),
        "clip_sample_range": 1.0, "prediction_type": PREDICTIONS[diffusion.prediction.value], "thresholding": False,
        "timestep_spacing": spacing if spacing in ("linspace", "leading", "trailing") else "trailing",
        "steps_offset": 0, "rescale_betas_zero_snr": False}


def named_schedule(betas: list[float], config: dict[str, Any]) -> NoiseSchedule:
    """The ddpmkit schedule with exactly these β_t (linear, cosine or sigmoid, as written, or rescaled to zero
    terminal SNR), else a custom one: an exported run comes back with its own schedule."""
    exact = torch.as_tensor(betas, dtype=torch.float64)
    ranges = {"beta_start": config.get("beta_start", 1e-4), "beta_end": config.get("beta_end", 0.02)}
    for kind in SCHEDULE_KINDS:
        named = NoiseSchedule.from_name(kind, len(exact), **({} if kind == "cosine" else ranges))
        for candidate in (named, named.rescale_zero_terminal_snr()):
            if torch.equal(candidate.betas, exact):
                return candidate
    return NoiseSchedule(exact)


def diffusion_from(config: dict[str, Any]) -> Diffusion:
    """The ddpmkit diffusion of a DDPM/DDIM scheduler config (the schedule as ddpmkit names it where it is one of
    ddpmkit's: a linear, cosine or sigmoid β_t equal to the config's, else the config's own β_t)."""
    T = int(config.get("num_train_timesteps", 1000))
    if config.get("trained_betas") is not None:
        schedule = named_schedule(config["trained_betas"], config)
    else:
        kind = {"linear": "linear", "squaredcos_cap_v2": "cosine"}.get(config.get("beta_schedule", "linear"))
        if kind is None:
            raise DdpmkitError(f"beta_schedule {config.get('beta_schedule')!r} has no ddpmkit equivalent (linear, "
                               "squaredcos_cap_v2 or trained_betas)")
        params = {"beta_start": config.get("beta_start", 1e-4), "beta_end": config.get("beta_end", 0.02)}
        schedule = NoiseSchedule.from_name(kind, T, **(params if kind == "linear" else {}))
    if config.get("rescale_betas_zero_snr") and config.get("trained_betas") is None:
        schedule = schedule.rescale_zero_terminal_snr()
    if schedule.num_steps != T:
        raise DdpmkitError(f"the scheduler has {len(schedule)} betas for num_train_timesteps={T}")
    predictions = {v: k for k, v in PREDICTIONS.items()}
    prediction = predictions.get(config.get("prediction_type", "epsilon"))
    variance = config.get("variance_type", "fixed_small")
    if prediction is None or variance not in ("fixed_small", "fixed_large"):
        raise DdpmkitError(f"prediction_type={config.get('prediction_type')!r} / variance_type={variance!r} have no "
                           "ddpmkit equivalent (epsilon, sample or v_prediction; fixed_small or fixed_large)")
    if config.get("thresholding"):
        raise DdpmkitError("dynamic thresholding in the scheduler has no ddpmkit setting; turn it off to import")
    return Diffusion(schedule, prediction=prediction, variance=variance,
                     clip_denoised=bool(config.get("clip_sample", True)))


# ----- folders ---------------------------------------------------------------------------------------------------

def export_run(run: str | Path, out: str | Path, weights: str = "ema") -> Path:
    """Write a run's newest (or given) checkpoint as a diffusers DDPMPipeline folder ``out``.

    ``out`` holds model_index.json, unet/config.json, unet/diffusion_pytorch_model.safetensors and
    scheduler/scheduler_config.json; every check runs before anything is written."""
    folder, checkpoint = RunFolder.locate(run)
    info = folder.info(checkpoint)
    if info.lora:
        raise DdpmkitError(f"{checkpoint} is a LoRA run: merge its adapter first (ddpmkit lora merge) and export that")
    unet_config = unet2d_config(info.unet)
    scheduler = scheduler_config(info.diffusion, info.sampler[2] or "trailing")
    tensors, _ = load_checkpoint(checkpoint, names=(weights,))
    if weights not in tensors:
        raise DdpmkitError(f"{checkpoint} has no {weights} weights; use --weights ema or model")
    from ..models import UNet

    model = UNet(info.unet)
    model.load_state_dict(tensors[weights])  # the canonical layout, whatever the checkpoint's age
    state = to_diffusers_state_dict(model.state_dict(), info.unet)
    out = Path(out)
    (out / "unet").mkdir(parents=True, exist_ok=True)
    (out / "scheduler").mkdir(exist_ok=True)
    weights_file = out / "unet" / WEIGHTS_NAME
    tmp = weights_file.with_name(f".{WEIGHTS_NAME}.tmp-{os.getpid()}")
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp),
              metadata={"format": "pt", "source": f"ddpmkit {checkpoint}"})
    os.replace(tmp, weights_file)
    fsync_dir(weights_file.parent)
    atomic_write_text(out / "unet" / "config.json", json.dumps(unet_config, indent=2) + "\n")
    atomic_write_text(out / "scheduler" / "scheduler_config.json", json.dumps(scheduler, indent=2) + "\n")
    index = {"_class_name": "DDPMPipeline", "_diffusers_version": DIFFUSERS_VERSION,
             "scheduler": ["diffusers", "DDPMScheduler"], "unet": ["diffusers", "UNet2DModel"]}
    atomic_write_text(out / "model_index.json", json.dumps(index, indent=2) + "\n")
    return out


def _unet_folder(path: Path) -> tuple[Path, Path | None]:
    """(the UNet2DModel folder, the scheduler folder or None) of a pipeline folder or a bare UNet folder."""
    if (path / "model_index.json").is_file() or (path / "unet" / "config.json").is_file():
        scheduler = path / "scheduler"
        return path / "unet", scheduler if (scheduler / "scheduler_config.json").is_file() else None
    return path, None


def read_unet2d(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor], Diffusion | None]:
    """(the UNet2DModel config, its weights, the scheduler's diffusion or None) of a diffusers folder."""
    path = Path(path)
    if not path.exists():
        raise DdpmkitError(f"{path} does not exist; pass a UNet2DModel folder (config.json + {WEIGHTS_NAME}) or a "
                           "pipeline folder holding unet/")
    unet_dir, scheduler_dir = _unet_folder(path)
    try:
        config = json.loads((unet_dir / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DdpmkitError(f"{unet_dir}/config.json is not readable JSON ({exc}); pass a UNet2DModel folder") from None
    weights = unet_dir / WEIGHTS_NAME
    if not weights.is_file():
        pickled = sorted(p.name for p in unet_dir.glob("*.bin"))
        if pickled:
            raise DdpmkitError(f"{unet_dir} holds {pickled[0]}, a pickle, which ddpmkit never loads; convert it where "
                               "you trust it: UNet2DModel.from_pretrained(DIR).save_pretrained(DIR, "
                               "safe_serialization=True)")
        raise DdpmkitError(f"{unet_dir} has no {WEIGHTS_NAME}")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise DdpmkitError(f"{weights} is truncated or corrupt ({exc})") from None
    diffusion = None
    if scheduler_dir is not None:
        try:
            scheduler = json.loads((scheduler_dir / "scheduler_config.json").read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise DdpmkitError(f"{scheduler_dir}/scheduler_config.json is not readable JSON ({exc})") from None
        diffusion = diffusion_from(scheduler)
    return config, state, diffusion


def import_unet2d(path: str | Path, out: str | Path, data: str | None = None) -> Path:
    """A diffusers UNet2DModel (or DDPM pipeline) folder as a ddpmkit run folder ``out``; returns its checkpoint.

    Without a scheduler the noise process is DDPM's (linear β from 1e-4 to 0.02 over 1000 steps, ε-prediction).
    ``data`` records the data set it was trained on (eval needs it for reference statistics)."""
    run = RunFolder(Path(out))
    if run.has_checkpoints():
        raise DdpmkitError(f"{run.path} already holds a run; pass another --out")
    run.check_new_run_folder()
    run.check_no_writer()
    config, state, diffusion = read_unet2d(path)
    unet = unet_config_from(config)
    weights = from_diffusers_state_dict(state, unet)
    diffusion = diffusion or Diffusion(NoiseSchedule.linear(1000))
    schedule = diffusion.schedule
    if schedule.kind not in SCHEDULE_KINDS:
        raise DdpmkitError("the scheduler's β_t are none of ddpmkit's schedules (linear, cosine, sigmoid); "
                           "sampling would work but training and LoRA could not rebuild it, so it is refused")
    run_config = RunConfig.from_dict({
        "data": {"name": data or "", "image_size": unet.image_size},
        "model": {"size": "tiny", "overrides": {k: v for k, v in unet.to_dict().items() if k != "num_classes"},
                  "class_conditional": unet.num_classes is not None},
        "diffusion": {"schedule": schedule.kind, "num_steps": schedule.num_steps,
                      "prediction": diffusion.prediction.value, "variance": diffusion.variance.value,
                      "zero_terminal_snr": schedule.zero_terminal_snr, "clip_denoised": diffusion.clip_denoised},
        "train": {"steps": 1, "sample_sampler": "ddim", "sample_steps": 50}}, where=f"{path}")
    info = RunInfo(unet, diffusion, step=0, config=run_config, data_name=data)
    with run.acquire_writer():  # the run's one writer while it is written
        if run.has_checkpoints():  # another command got there first
            raise DdpmkitError(f"{run.path} already holds a run; pass another --out")
        checkpoint = save_checkpoint(run.checkpoint_dir(0), {"ema": weights, "model": weights}, info.to_state())
        run_config.save(run.config_file)
    return checkpoint
