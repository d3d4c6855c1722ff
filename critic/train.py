"""Train the progress critic on labelled pairs drawn from episodes.

One function, :func:`train_critic`, reads top to bottom: build the critic, cache frame
tokens (frozen backbone), then for every step draw a balanced batch of labelled pairs
(:class:`limbic.critic.labels.PairSampler`), drop views at random, regress progress (MSE)
and classify done (masked BCE). Logs go to TensorBoard under ``<out_dir>/tb``; checkpoints
to ``<out_dir>/checkpoints``. Every step's randomness is derived from ``(seed, step)``, so a
run resumed from a checkpoint continues exactly as if it had never stopped.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 (the PyTorch idiom)
from tqdm import tqdm

from limbic.critic.augment import (
    InstructionAugConfig,
    InstructionVariants,
    shift_tokens,
    token_grid,
)
from limbic.critic.evaluate import CriticEvalConfig, compute_metrics, score_episodes
from limbic.critic.features import CACHE_DTYPES, FrameTokens
from limbic.critic.labels import PairBatch, PairSampler, PairSamplingConfig, done_labels
from limbic.critic.metrics import best_done_threshold
from limbic.critic.model import CriticModelConfig, ProgressCritic
from limbic.critic.value import DONE_SOURCES, done_probability
from limbic.data.schema import EpisodeArrays
from limbic.launch.config import require


@dataclass
class CriticTrainConfig:
    """Everything that defines a critic training run."""

    model: CriticModelConfig = field(default_factory=CriticModelConfig)
    """Critic architecture."""
    pairs: PairSamplingConfig = field(default_factory=PairSamplingConfig)
    """Pair sampling and labels."""
    eval: CriticEvalConfig = field(default_factory=lambda: CriticEvalConfig(plots=False))
    """How validation episodes are scored during training."""
    steps: int = 3000
    """Optimiser steps in total (a resumed run stops at the same total)."""
    batch_size: int = 64
    """Pairs per step."""
    lr: float = 3e-4
    """Peak AdamW learning rate."""
    weight_decay: float = 1e-4
    """AdamW weight decay."""
    warmup_steps: int = 100
    """Linear learning-rate warm-up; cosine decay to 10 % afterwards."""
    grad_clip: float = 1.0
    """Global gradient-norm clip."""
    done_loss_weight: float = 0.5
    """Weight of the done BCE beside the progress MSE."""
    match_loss_weight: float = 0.5
    """Weight of the match gate's BCE (class-balanced; needs ``pairs.mismatch_fraction`` > 0)."""
    done_balance: bool = True
    """Class-balance the done BCE per batch: done frames are a few percent of all frames, so
    without it the head learns to say "not done" and done recall collapses."""
    view_dropout: float = 0.15
    """Probability of dropping each view of a pair (at least one view always stays)."""
    lang_aug: InstructionAugConfig = field(default_factory=InstructionAugConfig)
    """Perturbed copies of the training instructions (:mod:`limbic.critic.augment`; off by default)."""
    token_shift: int = 0
    """Largest shift, in token-grid cells, of a pair's ``token_shift_views`` (both frames by the
    same offset; :func:`limbic.critic.augment.shift_tokens`); 0: off."""
    token_shift_p: float = 0.5
    """Probability that a pair is shifted (when ``token_shift`` > 0)."""
    token_shift_views: list[str] = field(default_factory=lambda: ["front"])
    """Views the token shift moves (a wrist view moves with the arm)."""
    seed: int = 0
    """Seed of weights and of every step's pairs, dropout and view dropout."""
    out_dir: str = "runs/critic"
    """Where checkpoints and TensorBoard logs go."""
    log_every: int = 50
    """Steps between TensorBoard scalars."""
    eval_every: int = 500
    """Steps between validation passes (0: only at the end, when validation episodes are given)."""
    checkpoint_every: int = 500
    """Steps between checkpoints (the final step always writes one)."""
    calibrate_done: bool = True
    """At every validation pass set the critic's done threshold to the one with the best done F1
    on the validation episodes (saved in the checkpoint; ``limbic-eval-critic`` uses it)."""
    resume: bool = True
    """Continue from ``<out_dir>/checkpoints/last.pt`` when it exists."""
    init_from: str = ""
    """Start from the weights and calibrated done thresholds of this critic checkpoint
    (fine-tuning, e.g. on one demonstration; validation passes calibrate the thresholds again);
    a run that resumes from its own ``last.pt`` ignores it."""
    cache_dtype: str = "float16"
    """Dtype of cached frame tokens (frozen backbones): float16, bfloat16 or float32."""
    token_cache_dir: str | None = None
    """Keep the frame tokens of a frozen backbone on disk here too, one file per episode named by
    a digest of the frames, backbone and settings (:mod:`limbic.critic.features`): the next run
    on the same recordings skips the backbone. None: in memory only."""
    device: str = "cpu"
    """Torch device."""
    num_threads: int = 0
    """torch CPU threads (0: leave torch's default)."""
    progress_bar: bool = True
    """Show a tqdm progress bar."""

    def __post_init__(self) -> None:
        require(self.steps >= 1, "critic.steps", f"expected >= 1, got {self.steps}")
        require(self.batch_size >= 2, "critic.batch_size", f"expected >= 2, got {self.batch_size}")
        require(self.lr > 0, "critic.lr", f"expected > 0, got {self.lr}")
        require(
            0.0 <= self.view_dropout < 1.0,
            "critic.view_dropout",
            f"expected [0, 1), got {self.view_dropout}",
        )
        require(
            self.token_shift >= 0 and 0.0 <= self.token_shift_p <= 1.0,
            "critic.token_shift",
            f"need token_shift >= 0 and token_shift_p in [0, 1], got {self.token_shift}, {self.token_shift_p}",
        )
        require(
            not self.token_shift or set(self.token_shift_views) <= set(self.model.views),
            "critic.token_shift_views",
            f"{self.token_shift_views} are not all among the critic's views {self.model.views}",
        )
        require(
            self.cache_dtype in CACHE_DTYPES,
            "critic.cache_dtype",
            f"expected one of {sorted(CACHE_DTYPES)}, got {self.cache_dtype!r}",
        )
        require(
            self.checkpoint_every >= 1 and self.log_every >= 1,
            "critic.checkpoint_every",
            "checkpoint_every and log_every must be >= 1",
        )


@dataclass
class TrainResult:
    """What a training run leaves behind."""

    critic: ProgressCritic
    checkpoint: Path
    """The last checkpoint (also loadable with :meth:`ProgressCritic.from_checkpoint`)."""
    step: int
    val_metrics: dict[str, float] = field(default_factory=dict)
    """Metrics of the last validation pass (empty without validation episodes)."""
    best_checkpoint: Path | None = None
    """``best.pt``: the critic of the validation pass with the best :func:`selection_score`."""


def _lr_factor(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def drop_views(present: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """Drop each present view with probability ``p``, keeping at least one per sample."""
    if p <= 0:
        return present
    keep = present & (torch.rand(present.shape, generator=generator) >= p).to(present.device)
    empty = ~keep.any(1)
    if empty.any():
        # Restore one random present view where everything was dropped.
        score = torch.rand(present.shape, generator=generator).to(present.device) * present
        keep[empty] = F.one_hot(score[empty].argmax(1), present.shape[1]).bool()
    return keep


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write atomically: a crash mid-write never leaves a truncated checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def train_critic(
    config: CriticTrainConfig,
    episodes: list[EpisodeArrays],
    val_episodes: list[EpisodeArrays] | None = None,
    stop_at_step: int | None = None,
) -> TrainResult:
    """Train a :class:`ProgressCritic` on ``episodes``; validate on ``val_episodes`` when given.

    ``stop_at_step`` ends this call early (with a checkpoint) as a preemption would; calling
    again with the same config resumes and finishes the schedule of ``config.steps``.
    """
    if config.num_threads > 0:
        torch.set_num_threads(config.num_threads)
    out = Path(config.out_dir)
    ckpt_path = out / "checkpoints" / "last.pt"
    best_path = out / "checkpoints" / "best.pt"
    best_score = -math.inf
    device = torch.device(config.device)

    torch.manual_seed(config.seed)
    critic = ProgressCritic(config.model).to(device)
    if config.init_from:
        # a fine-tune starts from the weights and the calibrated done thresholds: without
        # validation to calibrate them again it must not fall back to 0.5
        init = ProgressCritic.from_checkpoint(config.init_from)
        if asdict(init.config) != asdict(config.model):
            raise ValueError(
                f"critic.init_from: {config.init_from} was trained with model config "
                f"{asdict(init.config)}, not {asdict(config.model)}; give the same critic.model options"
            )
        critic.load_state_dict(init.state_dict())
        critic.done_threshold = init.done_threshold
        critic.done_thresholds = dict(init.done_thresholds)
    params = [p for p in critic.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: _lr_factor(s, config.warmup_steps, config.steps)
    )
    start = 0
    if config.resume and ckpt_path.exists():
        state = torch.load(ckpt_path, map_location=device, weights_only=True)  # no code unpickled
        if state["critic"]["config"] != asdict(config.model):
            raise ValueError(
                f"resume: {ckpt_path} was trained with model config {state['critic']['config']}, not {asdict(config.model)}; use a new out_dir or resume=false"
            )
        critic.load_state_dict(state["critic"]["model"])
        critic.load_thresholds(state["critic"])
        best_score = float(state.get("best_score", -math.inf))
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start = int(state["step"])

    # A pair needs two frames; one-frame episodes (the task done on the first step) teach nothing.
    usable = [e for e in episodes if len(e) >= 2]
    if len(usable) < len(episodes):
        print(
            f"train_critic: skipping {len(episodes) - len(usable)} episode(s) shorter than 2 frames"
        )
    episodes = usable
    sampler = PairSampler(episodes, config.pairs, seed=config.seed)
    tokens = FrameTokens(
        critic,
        episodes,
        config.cache_dtype,
        show_progress=config.progress_bar,
        cache_dir=config.token_cache_dir,
    )
    variants = InstructionVariants(sampler.instructions, config.lang_aug)
    lang_table = critic.encode_instructions(variants.texts)
    if config.token_shift:  # the views are checked against the critic's only when shifting
        grid = token_grid(critic.image_hw, critic.num_tokens)
        shift_views = [critic.views.index(v) for v in config.token_shift_views]
    val_tokens = (
        FrameTokens(critic, val_episodes, config.cache_dtype, cache_dir=config.token_cache_dir)
        if val_episodes
        else None
    )

    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(out / "tb"), purge_step=start)
    val_metrics: dict[str, float] = {}
    end = config.steps if stop_at_step is None else min(stop_at_step, config.steps)
    bar = tqdm(
        range(start, end),
        initial=start,
        total=config.steps,
        desc="critic",
        disable=not config.progress_bar,
    )
    try:
        for step in bar:
            rng = np.random.default_rng([config.seed, step])
            gen = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
            torch.manual_seed(config.seed * 1_000_003 + step)  # dropout layers
            critic.train()
            batch = sampler.sample(config.batch_size, rng)
            tok_a, present_a = tokens.get(batch.episode_a, batch.frame_a)
            tok_b, present_b = tokens.get(batch.episode_b, batch.frame_b)
            views = drop_views(present_a & present_b, config.view_dropout, gen)
            if config.token_shift:
                k = config.token_shift
                moved = rng.random(len(batch)) < config.token_shift_p
                dy = np.where(moved, rng.integers(-k, k + 1, len(batch)), 0)
                dx = np.where(moved, rng.integers(-k, k + 1, len(batch)), 0)
                tok_a = shift_tokens(tok_a, grid, dy, dx, shift_views)
                tok_b = shift_tokens(tok_b, grid, dy, dx, shift_views)
            lang = lang_table[torch.from_numpy(variants.draw(batch.instruction, rng))]
            lang_d = critic.embed_lang(lang)
            z_a = critic.embed_frame(tok_a, lang_d, views)
            z_b = critic.embed_frame(tok_b, lang_d, views)
            progress = critic.pair_head(z_a, z_b, lang_d)
            done_logit = critic.done_head(z_b, lang_d)

            p_mask = torch.from_numpy(batch.progress_mask).to(device).float()
            p_target = torch.from_numpy(batch.progress).to(device)
            progress_loss = ((progress - p_target) ** 2 * p_mask).sum() / p_mask.sum().clamp(
                min=1.0
            )
            d_mask = torch.from_numpy(batch.done_mask).to(device).float()
            d_target = torch.from_numpy(batch.done).to(device)
            d_weight = done_weights(d_target, d_mask) if config.done_balance else d_mask
            done_loss = (
                F.binary_cross_entropy_with_logits(done_logit, d_target, reduction="none")
                * d_weight
            ).sum() / d_weight.sum().clamp(min=1.0)
            loss = progress_loss + config.done_loss_weight * done_loss
            ref_loss = None
            if critic.config.reference_done:
                ref_loss = _reference_done_loss(
                    critic, sampler, tokens, batch, tok_b, views, d_target, config, step, gen
                )
                if ref_loss is not None:
                    loss = loss + config.done_loss_weight * ref_loss
            match_loss = None
            if critic.match_mlp is not None and batch.mismatch.any():
                # every pair is labelled: 1 under its own task's instruction, 0 under another's
                matched = torch.from_numpy(~batch.mismatch).to(device).float()
                m_weight = done_weights(matched, torch.ones_like(matched))
                match_loss = (
                    F.binary_cross_entropy_with_logits(
                        critic.match_logit(z_a, z_b, lang_d), matched, reduction="none"
                    )
                    * m_weight
                ).sum() / m_weight.sum()
                loss = loss + config.match_loss_weight * match_loss

            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            optimizer.step()
            scheduler.step()
            done_steps = step + 1

            if done_steps % config.log_every == 0 or done_steps == config.steps:
                writer.add_scalar("loss/total", loss.item(), done_steps)
                writer.add_scalar("loss/progress", progress_loss.item(), done_steps)
                writer.add_scalar("loss/done", done_loss.item(), done_steps)
                if match_loss is not None:
                    writer.add_scalar("loss/match", match_loss.item(), done_steps)
                if ref_loss is not None:
                    writer.add_scalar("loss/reference_done", ref_loss.item(), done_steps)
                writer.add_scalar("train/grad_norm", float(grad_norm), done_steps)
                writer.add_scalar("train/lr", scheduler.get_last_lr()[0], done_steps)
                bar.set_postfix(
                    loss=f"{loss.item():.4f}",
                    progress=f"{progress_loss.item():.4f}",
                    done=f"{done_loss.item():.3f}",
                )
            if val_episodes and (
                (config.eval_every and done_steps % config.eval_every == 0)
                or done_steps == config.steps
            ):
                # the reference done head needs successes of each instruction to compare with,
                # which a few validation episodes per task rarely hold: the training episodes
                val_metrics = validate(
                    critic,
                    val_episodes,
                    val_tokens,
                    config,
                    references=episodes if critic.config.reference_done else None,
                )
                for k, v in val_metrics.items():
                    if np.isfinite(v):
                        writer.add_scalar(f"val/{k}", v, done_steps)
                score = selection_score(val_metrics)
                if score > best_score:  # the best validation pass so far is kept as best.pt
                    best_score = score
                    save_checkpoint(
                        best_path,
                        {
                            "critic": critic.export_state(),
                            "step": done_steps,
                            "val_metrics": val_metrics,
                            "selection_score": score,
                        },
                    )
            if done_steps % config.checkpoint_every == 0 or done_steps in (config.steps, end):
                save_checkpoint(
                    ckpt_path,
                    {
                        "critic": critic.export_state(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "step": done_steps,
                        "train_config": asdict(config),
                        "val_metrics": val_metrics,
                        "best_score": best_score,
                    },
                )
    finally:
        bar.close()
        writer.close()
    critic.eval()
    return TrainResult(
        critic,
        ckpt_path,
        max(start, end),
        val_metrics,
        best_path if best_path.is_file() else None,
    )


def _reference_done_loss(
    critic: ProgressCritic,
    sampler: PairSampler,
    tokens: FrameTokens,
    batch: PairBatch,
    tok_b: torch.Tensor,
    views: torch.Tensor,
    d_target: torch.Tensor,
    config: CriticTrainConfig,
    step: int,
    gen: torch.Generator,
) -> torch.Tensor | None:
    """Class-balanced BCE of the reference done head on the batch's labelled frames ``b``
    (mismatched pairs left out), each against a goal frame of another success of its instruction,
    or, for ``reference_negative_fraction`` of the done frames, of another goal of its task
    (label 0). The references come from their own stream of ``(seed, step)``, so turning the head on leaves
    the pairs, labels and view dropout of every step as they were."""
    ref_ep, ref_fr, negative = sampler.draw_references(
        batch.episode_b, np.random.default_rng([config.seed, step, 1]), done_b=batch.done
    )
    keep = np.flatnonzero((ref_ep >= 0) & batch.done_mask & ~batch.mismatch)
    if len(keep) == 0:
        return None
    tok_g, present_g = tokens.get(ref_ep[keep], ref_fr[keep])
    goal_views = drop_views(present_g, config.view_dropout, gen)
    z_goal = critic.embed_goal(tok_g, goal_views)
    rows = torch.from_numpy(keep).to(tok_b.device)
    logit = critic.reference_done_logit(tok_b[rows], z_goal, views[rows], tok_g, goal_views)
    target = d_target[rows] * torch.from_numpy(~negative[keep]).to(d_target)  # negatives: 0
    ones = torch.ones_like(target)
    # balanced on the frames' own done labels: a done frame against another goal's reference
    # weighs what it weighs against its own, so the head cannot gain by ignoring the reference
    # (balanced on the targets, the up-weighted positives would outweigh these negatives)
    weight = done_weights(d_target[rows], ones) if config.done_balance else ones
    bce = F.binary_cross_entropy_with_logits(logit, target, reduction="none")
    return (bce * weight).sum() / weight.sum()


def validate(
    critic: ProgressCritic,
    episodes: list[EpisodeArrays],
    tokens: FrameTokens | None,
    config: CriticTrainConfig,
    references: list[EpisodeArrays] | None = None,
) -> dict[str, float]:
    """Score the validation episodes (goal references from ``references``, else from the
    validation episodes themselves, each left out of its own); with ``calibrate_done``, first fit
    the critic's done threshold, for every done source the critic has (``done_f1_<source>`` in
    the metrics then)."""
    sources = list(DONE_SOURCES) if critic.config.reference_done else ["head"]
    # "mean" computes both heads' probabilities; every source is read from them
    eval_config = replace(config.eval, done_from="mean" if len(sources) > 1 else "head")
    scores = score_episodes(critic, episodes, tokens, references=references, config=eval_config)
    extra: dict[str, float] = {}
    if config.calibrate_done:
        labels = [done_labels(e, finish_at_success=config.eval.finish_at_success) for e in episodes]
        target = np.concatenate([lab for lab, _ in labels])
        labelled = np.concatenate([m for _, m in labels])
        for source in sources:
            prob = np.concatenate([done_probability(s.curves, source) for s in scores])
            critic.done_thresholds[source], f1 = best_done_threshold(prob, target, labelled)
            if len(sources) > 1:
                extra[f"done_f1_{source}"] = f1
        critic.done_threshold = critic.done_thresholds[config.eval.done_from]
    elif config.eval.done_threshold is not None:
        critic.done_threshold = config.eval.done_threshold
    for s in scores:
        s.curves.done_prob = done_probability(s.curves, config.eval.done_from)
    metrics = compute_metrics(
        episodes, scores, critic.done_threshold, config.eval.finish_at_success
    )
    metrics["done_threshold"] = critic.done_threshold
    return {**metrics, **extra}


SELECTION_KEYS = ("voc", "voc_f1", "done_f1", "cls_acc")


def selection_score(metrics: dict[str, float]) -> float:
    """One validation figure to keep the best checkpoint by: the mean of VOC, VOC-F1, done F1,
    classification accuracy and ``1 - mismatch`` (a missing or NaN figure counts as 0)."""

    def ok(v: float | None) -> float:
        return float(v) if v is not None and np.isfinite(v) else 0.0

    parts = [ok(metrics.get(k)) for k in SELECTION_KEYS]
    parts.append(1.0 - ok(metrics.get("mismatch")) if "mismatch" in metrics else 0.0)
    return float(np.mean(parts))


def done_weights(target: torch.Tensor, mask: torch.Tensor, max_ratio: float = 20.0) -> torch.Tensor:
    """Per-pair weights of the done BCE: labelled done and not-done frames each carry half the
    labelled mass of the batch (the rarer class up-weighted at most ``max_ratio`` times)."""
    pos = (target > 0.5).float() * mask
    neg = mask - pos
    n_pos, n_neg = pos.sum(), neg.sum()
    if n_pos == 0 or n_neg == 0:
        return mask
    ratio = (n_neg / n_pos).clamp(1.0 / max_ratio, max_ratio)
    return neg + pos * ratio
