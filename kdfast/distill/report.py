"""Results of a training run: ``results.json``, a short ``report.md`` and ``loss_curve.png``,
each written atomically (the caller writes on rank 0 only)."""
from __future__ import annotations

from pathlib import Path

from kdfast.distill.outputs import atomic_write, atomic_write_json, atomic_write_text


def plot_losses(path, curves: dict) -> bool:
    """Loss curves ``{name: [(step, loss), ...]}`` into a PNG; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, pts in curves.items():
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    finally:
        plt.close(fig)
    return True


def _fmt(v):
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def write_report(out_dir, res: dict) -> None:
    out_dir = Path(out_dir)
    atomic_write_json(out_dir / "results.json", res)
    has_png = plot_losses(out_dir / "loss_curve.png", {res["name"]: res["loss_history"]})
    c = res["config"]
    lines = [f"# kdfast run: {res['name']}", "",
             f"- loss: `{res['loss']}` (alpha {c['alpha']}, temperature {c['temperature']})",
             f"- optimiser: {c['optimizer']} lr {c['lr']}, batch {c['batch_size']}, "
             f"{res['steps']} steps ({res['epochs_done']:.2f} epochs), world size {res['world_size']}",
             f"- training time: {res['train_time_s']:.1f} s "
             f"({res['train_examples_per_s']:.0f} examples/s)",
             f"- parameters: {res['parameters']:,}"]
    if res.get("best_dev") is not None:
        lines.append(f"- best dev {c['metric'] or 'accuracy'}: {res['best_dev']:.4f} at step {res['best_step']}")
    for split in ("dev", "test"):
        if split in res:
            lines.append(f"- {split}: " + ", ".join(f"{k} {_fmt(v)}" for k, v in res[split].items()))
    if has_png:
        lines += ["", "![training loss](loss_curve.png)"]
    atomic_write_text(out_dir / "report.md", "\n".join(lines) + "\n")
