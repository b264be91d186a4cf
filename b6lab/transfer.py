"""Does the best learning rate stay put as the model widens? The statistics and the coordinate
check behind `b6lab transfer-check` (commands/transfer_check.py runs the sweep and writes the files).

**The optimum per width.** For each width, final validation loss against x = ln(lr) near the
best lr is fitted by a parabola, loss = a + b x + c x^2, and the optimum is x* = -b / (2c). The
parabola is a local model: only the grid's best lr (by mean loss over seeds) and its neighbours
within `window` grid steps on each side are fitted (5 lrs by default), every seed's run a point;
runs that diverged are left out. All widths are fitted jointly, each with its own a, b, c, by
ordinary least squares with one residual variance pooled across widths (df = points - 3 x
widths): the noise of a final loss is taken to be the same at every width and lr and independent
between runs (one seed's runs share their data order, so with several seeds that is an
approximation). The interval of x* is the delta method's, t-quantile at the pooled df:
se(x*)^2 = g' Cov(b, c) g with g = (-1/(2c), b/(2c^2)). It assumes the parabola is right in the
window; an optimum at the grid's edge (not bracketed) or a parabola that opens downwards (no
minimum) is reported as such, and its interval is not to be read.

**The drift.** The least-squares slope of ln(lr*) against ln(width): 0 when the optimum stays,
-1 when it falls as 1/width. Its standard error propagates the per-width variances (the widths'
parabolas share no parameter, so their x* are independent but for the pooled variance), with
the same t quantile. tests/test_transfer.py checks both intervals' coverage by simulation.

**The coordinate check** (Yang et al. 2022, section D.1): after a few steps at one lr, the RMS of
each layer's output on one batch, against width. Under μP every layer's activations should be
O(1) in width (flat lines); under standard parametrization with Adam the logits and the blocks'
outputs grow with width, because each hidden matrix's update moves its output by ~ lr x fan_in.
The summary per layer is the slope of ln(RMS) against ln(width).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import stats

ALPHA = 0.05
WINDOW = 2  # grid steps fitted on each side of the best lr


@dataclass
class WidthOptimum:
    width: int
    lr: float | None  # exp(x*); None where the parabola has no minimum (or one past a float's range)
    low: float | None  # the interval, in lr
    high: float | None
    log_lr: float | None
    log_lr_se: float | None
    fitted_lrs: list[float]  # the lrs the parabola was fitted on
    coefficients: list[float]  # a, b, c of loss = a + b (x - centre) + c (x - centre)^2
    centre: float
    bracketed: bool  # the best lr of the grid is not at its edge
    points: int
    note: str = ""


@dataclass
class Drift:
    slope: float | None  # d ln(lr*) / d ln(width)
    low: float | None
    high: float | None
    se: float | None
    widths: list[int] = field(default_factory=list)  # the widths whose optimum entered it
    note: str = ""


@dataclass
class TransferFit:
    optima: list[WidthOptimum]
    drift: Drift
    df: int
    residual_sd: float | None
    alpha: float = ALPHA

    def to_dict(self) -> dict:
        return asdict(self)


def window_points(lrs: np.ndarray, losses: np.ndarray, window: int = WINDOW) -> tuple[np.ndarray, bool]:
    """Which runs to fit (a mask over them) and whether the best lr is inside the grid.
    `lrs` and `losses` are one width's runs (every seed's); non-finite losses are diverged runs."""
    grid = np.unique(lrs)
    means = np.array([np.mean(losses[(lrs == lr) & np.isfinite(losses)]) if np.any((lrs == lr) & np.isfinite(losses))
                      else np.inf for lr in grid])
    best = int(np.argmin(means))
    bracketed = 0 < best < len(grid) - 1  # a diverged neighbour brackets it too
    kept = grid[max(0, best - window): best + window + 1]
    return np.isin(lrs, kept) & np.isfinite(losses), bool(bracketed)


def fit_optima(runs: dict[int, tuple[list[float], list[float]]], window: int = WINDOW, alpha: float = ALPHA) -> TransferFit:
    """`runs[width] = (lrs, final losses)`, one entry per run (several seeds: repeated lrs)."""
    fits = []
    rss, points = 0.0, 0
    for width in sorted(runs):
        lrs, losses = (np.asarray(v, dtype=float) for v in runs[width])
        mask, bracketed = window_points(lrs, losses, window)
        x, y = np.log(lrs[mask]), losses[mask]
        centre = float(np.mean(x)) if len(x) else 0.0
        design = np.column_stack([np.ones_like(x), x - centre, (x - centre) ** 2])
        if len(np.unique(x)) < 3:
            fits.append((width, None, None, x, centre, bracketed))
            continue
        coef, *_ = np.linalg.lstsq(design, y, rcond=None)
        rss += float(np.sum((y - design @ coef) ** 2))
        points += len(y)
        fits.append((width, coef, np.linalg.inv(design.T @ design), x, centre, bracketed))
    fitted = [f for f in fits if f[1] is not None]
    df = points - 3 * len(fitted)
    sigma2 = rss / df if df > 0 else None
    t = stats.t.ppf(1 - alpha / 2, df) if df > 0 else None
    optima = []
    for width, coef, xtx_inv, x, centre, bracketed in fits:
        optima.append(_optimum(width, coef, xtx_inv, x, centre, bracketed, sigma2, t))
    return TransferFit(optima, _drift(optima, t), df, math.sqrt(sigma2) if sigma2 is not None else None, alpha)


def _optimum(width, coef, xtx_inv, x, centre, bracketed, sigma2, t) -> WidthOptimum:
    lrs = sorted(float(v) for v in np.unique(np.exp(x)))
    if coef is None:
        return WidthOptimum(width, None, None, None, None, None, lrs, [], centre, bracketed, len(x),
                            "fewer than 3 lrs with a finite loss near the best: nothing to fit")
    a, b, c = (float(v) for v in coef)
    if c <= 0:
        return WidthOptimum(width, None, None, None, None, None, lrs, [a, b, c], centre, bracketed, len(x),
                            "the loss is not convex in ln(lr) near the best lr: no minimum to place")
    log_opt = centre - b / (2 * c)
    se = None
    if sigma2 is not None:
        gradient = np.array([0.0, -1 / (2 * c), b / (2 * c**2)])
        se = float(math.sqrt(sigma2 * gradient @ xtx_inv @ gradient))
    low, high = (_exp(log_opt - t * se), _exp(log_opt + t * se)) if se is not None else (None, None)
    note = "" if bracketed else "the best lr is at the edge of the grid: widen the lr range (an extrapolation, left out of the drift)"
    return WidthOptimum(width, _exp(log_opt), low, high, log_opt, se, lrs, [a, b, c], centre, bracketed, len(x), note)


def _exp(x: float) -> float | None:
    """exp(x), or None past a float's range (a parabola that is nearly flat puts its vertex anywhere)."""
    return math.exp(x) if x < 700 else None


def _drift(optima: list[WidthOptimum], t: float | None) -> Drift:
    # An optimum beyond the grid's edge is the parabola's extrapolation, anywhere when it is nearly
    # flat: it would decide the slope alone.
    placed = [o for o in optima if o.log_lr is not None and o.bracketed]
    if len(placed) < 2:
        return Drift(None, None, None, None, [o.width for o in placed],
                     "fewer than two widths have an optimum inside the lr grid")
    u = np.log([o.width for o in placed])
    v = np.array([o.log_lr for o in placed])
    weights = (u - u.mean()) / np.sum((u - u.mean()) ** 2)
    slope = float(weights @ v)
    left_out = [o.width for o in optima if o not in placed]
    note = f"width {', '.join(map(str, left_out))} left out (no optimum inside the grid)" if left_out else ""
    if t is None or any(o.log_lr_se is None for o in placed):
        return Drift(slope, None, None, None, [o.width for o in placed], note or "no residual degrees of freedom")
    se = float(math.sqrt(np.sum(weights**2 * np.array([o.log_lr_se for o in placed]) ** 2)))
    return Drift(slope, slope - t * se, slope + t * se, se, [o.width for o in placed], note)


def parabola(optimum: WidthOptimum, lrs: np.ndarray) -> np.ndarray:
    a, b, c = optimum.coefficients
    x = np.log(lrs) - optimum.centre
    return a + b * x + c * x**2


# ---------------------------------------------------------------------------------------------
# The coordinate check


def layer_outputs(model) -> dict[str, object]:
    """The modules whose outputs the coordinate check measures, by a name for their layer kind:
    the embedding, every block's attention and feed-forward, every block (the residual stream) and
    the LM head (the logits, with the readout multiplier applied)."""
    modules = {"embedding": model.tok_emb}
    for i, block in enumerate(model.blocks):
        modules[f"block{i}.attn"] = block.attn
        modules[f"block{i}.ffn"] = block.ffn
        modules[f"block{i}"] = block
    modules["logits"] = model.lm_head
    return modules


def activation_rms(model, idx) -> dict[str, float]:
    """The RMS of each layer's output (layer_outputs) on the tokens `idx`, in eval mode."""
    import torch

    found: dict[str, float] = {}
    hooks = [module.register_forward_hook(lambda _m, _i, out, name=name: found.__setitem__(
        name, float(out.float().pow(2).mean().sqrt()))) for name, module in layer_outputs(model).items()]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(idx)
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return found


def rms_slopes(rms_by_width: dict[int, dict[str, float]]) -> dict[str, float]:
    """Per layer, the least-squares slope of ln(RMS) against ln(width): ~0 when flat."""
    widths = sorted(rms_by_width)
    u = np.log(widths)
    slopes = {}
    for layer in rms_by_width[widths[0]]:
        v = np.log([rms_by_width[w][layer] for w in widths])
        slopes[layer] = float(np.polyfit(u, v, 1)[0])
    return slopes


# ---------------------------------------------------------------------------------------------
# What is written


def drift_words(drift: Drift) -> str:
    if drift.slope is None:
        return drift.note
    if drift.low is None:
        return f"slope {drift.slope:+.2f} (no interval: {drift.note})"
    if drift.low <= 0 <= drift.high:
        verdict = "no drift detected (the interval covers 0)"
    else:
        verdict = f"the optimum {'falls' if drift.slope < 0 else 'rises'} with width"
    return verdict + (f"; {drift.note}" if drift.note else "")


def _lr(value) -> str:
    return "-" if value is None else f"{value:.3g}"


def markdown_tables(fits: dict[str, TransferFit], slopes: dict[str, dict[str, float]]) -> str:
    """The optimum per width, the drift, and the coordinate check's slopes: tables to paste."""
    level = int(round(100 * (1 - next(iter(fits.values())).alpha))) if fits else 95
    lines = [f"| parametrization | width | optimum lr | {level}% CI | lrs fitted | note |",
             "|---|---:|---:|---|---:|---|"]
    for name, fit in fits.items():
        for o in fit.optima:
            ci = f"[{_lr(o.low)}, {_lr(o.high)}]" if o.low is not None else "-"
            lines.append(f"| {name} | {o.width} | {_lr(o.lr)} | {ci} | {len(o.fitted_lrs)} | {o.note} |")
    lines += ["", f"| parametrization | drift: d ln(lr*) / d ln(width) | {level}% CI | widths | reading |",
              "|---|---:|---|---|---|"]
    for name, fit in fits.items():
        d = fit.drift
        ci = f"[{d.low:+.2f}, {d.high:+.2f}]" if d.low is not None else "-"
        slope = "-" if d.slope is None else f"{d.slope:+.2f}"
        lines.append(f"| {name} | {slope} | {ci} | {', '.join(map(str, d.widths))} | {drift_words(d)} |")
    if slopes:
        layers = list(next(iter(slopes.values())))
        lines += ["", "Coordinate check: slope of ln(activation RMS) against ln(width) after the check's steps (0: flat)",
                  "", "| layer | " + " | ".join(slopes) + " |", "|---|" + "---:|" * len(slopes)]
        for layer in layers:
            lines.append(f"| {layer} | " + " | ".join(f"{slopes[name][layer]:+.2f}" for name in slopes) + " |")
    return "\n".join(lines)


def plot_lr_curves(runs: dict[str, dict[int, tuple[list, list]]], fits: dict[str, TransferFit], path) -> None:
    """Loss against lr per width, one panel per parametrization, with each fitted parabola and its optimum."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs), figsize=(5.2 * len(runs), 4), squeeze=False, sharey=True)
    for ax, (name, by_width) in zip(axes[0], runs.items()):
        colours = plt.cm.viridis(np.linspace(0.1, 0.85, len(by_width)))
        optima = {o.width: o for o in fits[name].optima}
        for colour, width in zip(colours, sorted(by_width)):
            lrs, losses = (np.asarray(v, dtype=float) for v in by_width[width])
            finite = np.isfinite(losses)
            ax.scatter(lrs[finite], losses[finite], color=colour, s=14, label=f"width {width}")
            grid = np.unique(lrs[finite])
            ax.plot(grid, [losses[finite][lrs[finite] == lr].mean() for lr in grid], color=colour, alpha=0.35, lw=1)
            o = optima[width]
            if o.lr is not None and o.bracketed:
                dense = np.geomspace(min(o.fitted_lrs), max(o.fitted_lrs), 60)
                ax.plot(dense, parabola(o, dense), color=colour, lw=2)
                y = float(parabola(o, np.array([o.lr]))[0])
                if o.low is not None and o.high is not None:
                    ax.errorbar([o.lr], [y], xerr=[[o.lr - o.low], [o.high - o.lr]], color=colour, marker="v", capsize=3)
        d = fits[name].drift
        drift = "" if d.slope is None else f"drift {d.slope:+.2f}" + (f" [{d.low:+.2f}, {d.high:+.2f}]" if d.low is not None else "")
        ax.set(xscale="log", xlabel="learning rate (optim.lr)", title=f"{name}: {drift}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("final validation loss")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_coordinates(rms: dict[str, dict[int, dict[str, float]]], path) -> None:
    """Activation RMS against width per layer, one panel per parametrization (flat lines: μP's aim)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(rms), figsize=(5.2 * len(rms), 4), squeeze=False, sharey=True)
    for ax, (name, by_width) in zip(axes[0], rms.items()):
        widths = sorted(by_width)
        layers = list(by_width[widths[0]])
        colours = plt.cm.tab10(np.arange(len(layers)) % 10)
        for colour, layer in zip(colours, layers):
            ax.plot(widths, [by_width[w][layer] for w in widths], marker="o", color=colour, label=layer)
        ax.set(xscale="log", yscale="log", xlabel="width (model.d_model)", title=f"{name}: coordinate check")
        ax.set_xticks(widths, [str(w) for w in widths])
        ax.minorticks_off()
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("activation RMS after the check's steps")
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def coordinate_check(cfg, source, tokenizer, steps: int) -> dict[str, float]:
    """Train the run config's model (its parametrization, optimizer and optim.lr, constant: no
    schedule) for `steps` steps on the first batches of the training split, in fp32, and return
    activation_rms on the first validation batch."""
    import itertools

    import torch

    from b6lab import parts
    from b6lab.attention import AttentionContext
    from b6lab.data.packing import split_blocks, validation_batches
    from b6lab.train import hardware

    torch.manual_seed(cfg.train.seed)
    device = hardware.resolve_device(cfg.train.device)
    model_cfg = parts.resolve_vocab(cfg.model, tokenizer)
    model, _ = parts.build_model(model_cfg, AttentionContext(device, torch.float32, model_cfg.head_dim, 0.0))
    model.to(device)
    optimizer = parts.build_optimizer(cfg.optim, model)
    blocks = np.stack(list(itertools.islice(split_blocks(source, tokenizer, "train", cfg.seq_len),
                                            steps * cfg.train.batch_size)))
    batches = torch.from_numpy(blocks).to(device).split(cfg.train.batch_size)
    for batch in batches:
        loss = model(batch[:, :-1], batch[:, 1:])
        loss.backward()
        if cfg.optim.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    probe, _ = validation_batches(source, tokenizer, seq_len=cfg.seq_len, batch_size=cfg.train.batch_size, max_batches=1)[0]
    return activation_rms(model, probe.to(device))
