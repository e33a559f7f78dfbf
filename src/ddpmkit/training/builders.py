"""From a RunConfig to a run ready to train: :func:`build_training` assembles every part (device, data, diffusion,
the model from its source, the training state, resumed if asked, the metrics logger and the hooks) once, so the
:class:`~ddpmkit.training.Trainer` only loops. The pieces (the diffusion, the UNet config, the optimizer) and the
checks that reject a config, or a checkpoint to resume, before any work is done are here too; tests and benchmarks
import them.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from ..checkpoint import TRAINING_FILES, load_checkpoint, weights_error
from ..config import RunConfig
from ..data import BatchLoader, ImageArray, load_dataset
from ..device import autocast_dtype, configure_backend, resolve_precision
from ..diffusion import Diffusion
from ..errors import DdpmkitError
from ..models import UNet, UNetConfig
from ..run import STEP_PATTERN, RunFolder, RunInfo, WriterLock, checkpoint_step
from ..sampling import check_sampler_args
from ..schedule import NoiseSchedule
from ..timestep_sampler import TIMESTEP_SAMPLERS, make_timestep_sampler
from .distributed import DistributedOptions, Parallel, RankRNG, seed_rank_rng, setup_parallel
from .ema import EMA
from .hooks import Hook, LogMetrics, builtin_hooks, default_hooks, is_main_process
from .lora import LoRABase
from .metrics import MetricsLogger
from .state import Stateful, TrainingState


def build_diffusion(config: RunConfig) -> Diffusion:
    d = config.diffusion
    schedule = NoiseSchedule.from_name(d.schedule, d.num_steps, zero_terminal_snr=d.zero_terminal_snr)
    return Diffusion(schedule, prediction=d.prediction, variance=d.variance, loss_type=d.loss_type,
                     min_snr_gamma=d.min_snr_gamma, vlb_weight=d.vlb_weight, clip_denoised=d.clip_denoised)


def build_unet_config(config: RunConfig, data: ImageArray) -> UNetConfig:
    """The named UNet size, fitted to the data (size, channels, classes), with the config's overrides."""
    learned = config.diffusion.variance == "learned_range"  # the UNet outputs the variance channels too
    fitted: dict[str, Any] = {"image_size": data.image_size, "in_channels": data.channels, "learn_sigma": learned}
    if config.model.class_conditional:
        if data.num_classes < 2:
            raise DdpmkitError(f"{data.name} has no class labels; set model.class_conditional=false")
        fitted["num_classes"] = data.num_classes
    unet = UNetConfig.named(config.model.size, **{**fitted, **config.model.overrides})
    if unet.learn_sigma != learned:
        raise DdpmkitError("model.learn_sigma is set by diffusion.variance: a learned variance is "
                           "diffusion.variance=learned_range (trained with the hybrid loss); remove model.learn_sigma")
    return unet


def build_optimizer(model: torch.nn.Module, config: RunConfig) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters (all, or a LoRA run's adapters), fused where the build has it: one
    kernel for all parameters (~24 -> ~7 ms a step on this CPU)."""
    tc = config.train
    kwargs = dict(lr=tc.lr, betas=tuple(tc.betas), weight_decay=tc.weight_decay)
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        return torch.optim.AdamW(params, fused=True, **kwargs)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(params, **kwargs)


def validate_train_config(config: RunConfig) -> None:
    """Reject settings that would only fail later (after an epoch of training) or silently misbehave."""
    tc = config.train
    for section in ("train", "diffusion", "lora"):  # NaN passes every comparison below: refuse it (and inf) first
        for name, value in dataclasses.asdict(getattr(config, section)).items():
            if isinstance(value, float) and not math.isfinite(value):
                raise DdpmkitError(f"{section}.{name} must be a finite number, got {value}")
    if (tc.steps is None) == (tc.epochs is None):
        raise DdpmkitError("set exactly one of train.steps and train.epochs (e.g. --steps 2000 or --epochs 3)")
    if config.diffusion.num_steps < 2:
        raise DdpmkitError(f"diffusion.num_steps (T, the noise levels) must be at least 2, got "
                           f"{config.diffusion.num_steps}; 1000 is usual")
    positive = {"train.batch_size": tc.batch_size, "train.grad_accum": tc.grad_accum, "train.log_every": tc.log_every,
                "train.sample_every": tc.sample_every or 1, "train.checkpoint_every": tc.checkpoint_every or 1,
                "train.keep_checkpoints": tc.keep_checkpoints, "train.num_samples": tc.num_samples,
                "train.sample_steps": tc.sample_steps, "train.fid_every": tc.fid_every or 1,
                "train.steps": tc.steps if tc.steps is not None else 1, "train.fid_num": tc.fid_num - 1,
                "train.epochs": tc.epochs if tc.epochs is not None else 1}
    for key, value in positive.items():
        if value <= 0:
            raise DdpmkitError(f"{key} must be positive (got {value})")
    if tc.max_minutes is not None and not tc.max_minutes > 0:
        raise DdpmkitError(f"train.max_minutes must be positive (got {tc.max_minutes}); leave it unset for no limit")
    if tc.lr <= 0 or not 0 <= tc.ema_decay < 1:
        raise DdpmkitError("train.lr must be positive and train.ema_decay in [0, 1)")
    if not (len(tc.betas) == 2 and all(0 <= b < 1 for b in tc.betas)):
        raise DdpmkitError(f"train.betas must be two numbers in [0, 1) (AdamW's β1, β2), e.g. [0.9, 0.999]; "
                           f"got {list(tc.betas)}")
    for key, value in {"weight_decay": tc.weight_decay, "grad_clip": tc.grad_clip, "warmup_steps": tc.warmup_steps,
                       "min_lr_ratio": tc.min_lr_ratio}.items():
        if value < 0:
            raise DdpmkitError(f"train.{key} must be >= 0 (got {value}); 0 turns it off")
    if tc.min_lr_ratio > 1:
        raise DdpmkitError(f"train.min_lr_ratio must be in [0, 1] (got {tc.min_lr_ratio}): the lr decays to this "
                           "fraction of train.lr")
    try:
        check_sampler_args(tc.sample_sampler, tc.sample_steps, 0.0, config.diffusion.num_steps, tc.sample_spacing)
    except DdpmkitError as exc:
        raise DdpmkitError(f"train.sample_sampler/sample_steps/sample_spacing: {exc}") from None
    if not (isinstance(tc.sample_guidance, (int, float)) and math.isfinite(tc.sample_guidance)
            and tc.sample_guidance >= 0):
        raise DdpmkitError(f"train.sample_guidance must be a finite number >= 0 (1: no guidance), "
                           f"got {tc.sample_guidance!r}")
    if tc.sample_guidance != 1.0 and not config.model.class_conditional:
        raise DdpmkitError(f"train.sample_guidance={tc.sample_guidance} needs labels: set model.class_conditional=true "
                           "or train.sample_guidance=1")
    if tc.timestep_sampler not in TIMESTEP_SAMPLERS:
        raise DdpmkitError(f"unknown train.timestep_sampler '{tc.timestep_sampler}'; "
                           f"choose one of {', '.join(TIMESTEP_SAMPLERS)}")
    if tc.timestep_sampler == "loss-second-moment" and config.diffusion.variance != "learned_range":
        raise DdpmkitError(f"train.timestep_sampler={tc.timestep_sampler} samples t by the size of the L_vlb terms, "
                           "which only a learned variance trains; set diffusion.variance=learned_range or use uniform")
    if tc.log_sigma_std <= 0:
        raise DdpmkitError(f"train.log_sigma_std must be positive, got {tc.log_sigma_std}")
    if tc.fid_features not in ("inception", "classifier"):
        raise DdpmkitError(f"train.fid_features must be inception or classifier, not '{tc.fid_features}'")
    if config.lora.base is not None:
        from ..lora.adapter import check_rank, parse_targets

        check_rank(config.lora.rank)
        parse_targets(config.lora.targets)


# What a resumed run must share with its checkpoint for the continuation to be the same training run.
RESUME_KEYS = [("data", "name"), ("data", "image_size"), ("data", "hflip"), ("train", "batch_size"),
               ("train", "grad_accum"), ("train", "seed"), ("train", "timestep_sampler"), ("lora", "rank"),
               ("lora", "alpha"), ("lora", "targets")]


def check_resumable(info: RunInfo, config: RunConfig, unet: UNetConfig, diffusion: Diffusion, checkpoint: Path,
                    run: RunFolder) -> None:
    """One-line errors for a checkpoint (``info``: what it says about its run) that cannot continue as this run."""
    fix = "resume with the run folder's own config.yaml, or start a new run with --out"
    if info.unet.to_dict() != unet.to_dict():  # fields added after the checkpoint was written: their defaults
        raise DdpmkitError(f"checkpoint {checkpoint} was trained with another model config; {fix}")
    if info.diffusion.to_dict() != diffusion.to_dict():
        raise DdpmkitError(f"checkpoint {checkpoint} was trained with other diffusion settings; {fix}")
    saved = info.config or RunConfig()  # a key added after the checkpoint was written had its default then
    for section, key in RESUME_KEYS:
        was, now = getattr(getattr(saved, section), key), getattr(getattr(config, section), key)
        if (list(was) if isinstance(was, tuple) else was) != (list(now) if isinstance(now, tuple) else now):
            raise DdpmkitError(f"{section}.{key} was {was!r} in checkpoint {checkpoint} but is {now!r} now; {fix}")
    newer = [p for p in run.checkpoints() if STEP_PATTERN.match(p.name) and checkpoint_step(p) > info.step]
    if newer:
        raise DdpmkitError(f"{run.path} holds checkpoints newer than step {info.step} ({newer[-1].name}); "
                           "resume the newest, or branch into another folder with --out")


# What a resumed run may change without changing what it trains: how often and how it reports, where it runs, and
# where its LoRA base lies (the base itself is checked by fingerprint).
RESUME_FREE = {("train", key) for key in (
    "max_minutes", "device", "log_every", "sample_every", "sample_every_epochs", "checkpoint_every",
    "keep_checkpoints", "num_samples", "sample_sampler", "sample_steps", "sample_spacing", "sample_guidance",
    "sample_seed", "tensorboard", "fid_every", "fid_num", "fid_ref_num", "fid_features")} | {("lora", "base")}
# How long it trains: resuming to train longer is ordinary, but the learning-rate schedule then ends elsewhere.
RESUME_LENGTH = {("train", "steps"), ("train", "epochs")}


def resume_changes(saved: RunConfig | None, config: RunConfig) -> tuple[list[str], list[str]]:
    """What ``config`` changes against the config of the checkpoint it resumes, beyond what :func:`check_resumable`
    refuses (the model, the diffusion, RESUME_KEYS) and what changes nothing that is trained (RESUME_FREE):
    (the run's length, every other change: lr, weight decay, betas, EMA, precision, ...), each as
    ``train.lr 0.0002 -> 0.001``. Either makes the continuation another run than the interrupted one."""
    if saved is None:  # a checkpoint from before configs were saved in it: nothing to compare with
        return [], []
    length, other = [], []
    fixed = set(RESUME_KEYS) | RESUME_FREE
    for section in ("train", "lora"):
        was_section, now_section = getattr(saved, section), getattr(config, section)
        for field in dataclasses.fields(now_section):
            if (section, field.name) in fixed:
                continue
            was, now = getattr(was_section, field.name), getattr(now_section, field.name)
            if (list(was) if isinstance(was, tuple) else was) != (list(now) if isinstance(now, tuple) else now):
                shown = [list(v) if isinstance(v, tuple) else v for v in (was, now)]
                change = f"{section}.{field.name} {shown[0]} -> {shown[1]}"
                (length if (section, field.name) in RESUME_LENGTH else other).append(change)
    return length, other


# ----- where the model comes from ------------------------------------------------------------------------------

class ModelSource(Protocol):
    """Where a run's model comes from, chosen once by :func:`model_source`: it names the UNet, gives its initial
    weights, checks a checkpoint to resume, says what the run's RunInfo records about it (``lora``) and adds the
    hooks it needs."""

    def unet_config(self, config: RunConfig, data: ImageArray, diffusion: Diffusion) -> UNetConfig: ...

    def initialize(self, model: torch.nn.Module, config: RunConfig) -> None: ...

    def check_resume(self, info: RunInfo, checkpoint: Path) -> None: ...

    def lora_entry(self, config: RunConfig) -> dict[str, Any] | None: ...

    def hooks(self, config: RunConfig, data: ImageArray) -> list[Hook]: ...


class FreshUNet:
    """A new UNet: the config's named size fitted to the data, initialised from the run's seed."""

    def unet_config(self, config: RunConfig, data: ImageArray, diffusion: Diffusion) -> UNetConfig:
        return build_unet_config(config, data)

    def initialize(self, model: torch.nn.Module, config: RunConfig) -> None:
        pass  # the seeded initialisation of UNet(...)

    def check_resume(self, info: RunInfo, checkpoint: Path) -> None:
        if info.lora:
            raise DdpmkitError(f"checkpoint {checkpoint} is from a LoRA run; resume it with ddpmkit lora --resume")

    def lora_entry(self, config: RunConfig) -> dict[str, Any] | None:
        return None

    def hooks(self, config: RunConfig, data: ImageArray) -> list[Hook]:
        return []


def model_source(config: RunConfig) -> ModelSource:
    """A LoRA base when ``config.lora.base`` is set (:class:`~ddpmkit.training.lora.LoRABase`), else a fresh UNet."""
    return LoRABase.load(config.lora.base) if config.lora.base is not None else FreshUNet()


# ----- the whole run -------------------------------------------------------------------------------------------

@dataclass
class TrainingParts:
    """Everything a Trainer loops over, assembled by :func:`build_training`."""

    config: RunConfig
    run: RunFolder
    device: torch.device
    precision: str
    amp_dtype: torch.dtype | None
    data: ImageArray
    diffusion: Diffusion
    source: ModelSource
    unet_config: UNetConfig
    info: RunInfo                       # what every checkpoint of the run says about it (its step aside)
    state: TrainingState
    timestep_sampler: Any               # None: t uniform, drawn by the diffusion
    steps_per_epoch: int
    total_steps: int
    logger: MetricsLogger | None        # None off the main process
    hooks: list[Hook]                   # the periodic ones: the defaults, or those given
    builtin_hooks: list[Hook]           # the progress bar, the end-of-run reports, the model source's
    lock: WriterLock | None = None      # the run folder's writer lock (main process), held until fit returns
    parallel: Parallel = dataclasses.field(default_factory=Parallel)  # this process's part of a torchrun job
    train_model: torch.nn.Module | None = None  # what the loop runs: DistributedDataParallel(model), or the model


def build_training(config: RunConfig, run_dir: Path, resume: Path | None = None, data: ImageArray | None = None,
                   progress: bool = True, hooks: list[Hook] | None = None,
                   extras: dict[str, Stateful] | None = None,
                   distributed: DistributedOptions | None = None) -> TrainingParts:
    """Assemble a run from its config: check it, pick the device, load the data (unless given), choose where the
    model comes from, build the model, EMA, optimizer, loader and generator from the seed, restore them from
    ``resume`` (a run or checkpoint folder, checked to continue the same run), and on the main process write
    config.yaml and open the metrics logger. ``hooks`` replace the default periodic ones; ``extras`` (objects with
    ``state_dict``/``load_state_dict``) ride in every checkpoint. Under torchrun (WORLD_SIZE > 1) the process joins
    the others first (``distributed``: backend and join timeout; :mod:`.distributed`): the loader reads this rank's
    share of the global batch, the model trains inside DistributedDataParallel, and every RNG stays consistent."""
    tc, run = config.train, RunFolder(run_dir)
    validate_train_config(config)
    parallel = setup_parallel(tc.device, tc.batch_size, distributed)  # the single process outside torchrun
    main = is_main_process()  # the run folder is written by the main process only
    if main:
        run.check_no_writer()  # before reading a checkpoint another process may be writing or pruning
    device = parallel.device
    configure_backend(device)
    precision = resolve_precision(tc.precision, device)
    amp_dtype = autocast_dtype(precision, device)

    checkpoint = tensors = saved = resumed = None
    if resume is not None:
        _, checkpoint = RunFolder.locate(resume)
    inside = checkpoint is not None and run.path.resolve() in (Path(checkpoint).resolve(),
                                                               *Path(checkpoint).resolve().parents)
    if main and not inside:
        run.check_new_run_folder()  # a new run (or a branch) goes where nothing of the user's is
    if checkpoint is not None:
        tensors, saved = load_checkpoint(checkpoint, required=TRAINING_FILES)
        resumed = RunInfo.from_state(saved, checkpoint)

    data = data if data is not None else load_dataset(config.data.name, "train", config.data.image_size,
                                                      progress=progress)
    diffusion = build_diffusion(config)
    source = model_source(config)
    unet_config = source.unet_config(config, data, diffusion)
    if resumed is not None:
        # the label dropout is a training setting stored with the model: a resumed run keeps the one it was
        # trained with (runs from before the default became 0.1 have 0.0)
        unet_config = dataclasses.replace(unet_config, class_dropout_prob=resumed.unet.class_dropout_prob)
        check_resumable(resumed, config, unet_config, diffusion, checkpoint, run)
        source.check_resume(resumed, checkpoint)

    torch.manual_seed(tc.seed)
    model = UNet(unet_config)
    source.initialize(model, config)
    model = model.to(device)
    generator_device = device if device.type == "cuda" else torch.device("cpu")
    state = TrainingState(
        model=model,
        ema=EMA(model, tc.ema_decay, tc.ema_warmup),
        optimizer=build_optimizer(model, config),
        scaler=torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16),
        loader=BatchLoader(data, tc.batch_size, shuffle=True, hflip=config.data.hflip, seed=tc.seed,
                           model_kwargs=data.label_kwargs if unet_config.num_classes else None,
                           rank=parallel.rank, world_size=parallel.world_size),
        generator=torch.Generator(generator_device).manual_seed(tc.seed),
        device=device,
    )
    steps_per_epoch = math.ceil(len(state.loader) / tc.grad_accum)
    total_steps = tc.steps if tc.steps is not None else max(1, round(tc.epochs * steps_per_epoch))
    timestep_sampler = (None if tc.timestep_sampler == "uniform" else
                        make_timestep_sampler(tc.timestep_sampler, diffusion.num_steps,
                                              diffusion.schedule.snr.double().cpu().numpy(),
                                              tc.log_sigma_mean, tc.log_sigma_std))
    if timestep_sampler is not None:  # its loss history is part of the checkpoint: resume stays exact
        state.register("timestep_sampler", timestep_sampler)
    for name, obj in (extras or {}).items():
        state.register(name, obj)
    hooks = hooks if hooks is not None else default_hooks(config, steps_per_epoch, progress)
    metrics_hook = next((hook for hook in hooks if isinstance(hook, LogMetrics)), None)
    if metrics_hook is not None:  # the steps since its last row: the first row after a resume covers them too
        state.register("metrics_window", metrics_hook)
    if parallel.active:  # every rank's model RNG (dropout) rides in the checkpoint, gathered before each save
        parallel.rank_rng = RankRNG(parallel)
        state.register("rank_rng", parallel.rank_rng)
    if tensors is not None:
        try:
            state.load_checkpoint(tensors, saved)
        except RuntimeError as exc:  # weights of another model: one line, not a page of them
            error = weights_error(exc, checkpoint)
            if error is None:
                raise
            raise error from None
    if parallel.active and not parallel.rank_rng.restored:  # a new run, or one saved with another process count
        seed_rank_rng(parallel, tc.seed, state.step)

    info = RunInfo(unet=unet_config, diffusion=diffusion, config=config, data_name=data.name,
                   class_names=tuple(data.class_names), lora=source.lora_entry(config))
    logger = lock = None
    if main:  # the last step: the run's one writer from here until the Trainer's fit returns
        lock = run.acquire_writer()
        try:
            run.clean_interrupted_saves()
            config.save(run.config_file)
            logger = MetricsLogger(run, tc.tensorboard, resume_step=state.step if resumed is not None else None)
        except BaseException:
            lock.release()
            raise
    return TrainingParts(
        config=config, run=run, device=device, precision=precision, amp_dtype=amp_dtype, data=data,
        diffusion=diffusion, source=source, unet_config=unet_config, info=info, state=state,
        timestep_sampler=timestep_sampler, steps_per_epoch=steps_per_epoch, total_steps=total_steps, logger=logger,
        hooks=hooks, builtin_hooks=[*builtin_hooks(config), *source.hooks(config, data), *parallel.hooks()],
        lock=lock, parallel=parallel, train_model=parallel.wrap(state.model))
