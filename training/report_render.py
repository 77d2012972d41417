"""The report's pages and figures: accuracy against images per class, learning curves, Markdown and HTML."""

from __future__ import annotations

import html
from pathlib import Path


def plot_accuracy(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [r["images_per_class"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for kind, color in (("transfer", "tab:blue"), ("scratch", "tab:orange")):
        mean = [r[kind]["mean"] for r in rows]
        lo = [r[kind]["mean"] - r[kind]["min"] for r in rows]
        hi = [r[kind]["max"] - r[kind]["mean"] for r in rows]
        ax.errorbar(
            x,
            mean,
            yerr=[lo, hi],
            marker="o",
            capsize=4,
            color=color,
            label="transfer (pretrained base)" if kind == "transfer" else "from scratch",
        )
    ax.set_xscale("log")
    ax.set_xticks(x)
    ax.set_xticklabels([str(v) for v in x])
    ax.set_xlabel("training images per class")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title("Domain classes: transfer vs scratch (mean, min-max over seeds)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_curves(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first_seed = min(r["seed"] for r in results)
    rs = [r for r in results if r["seed"] == first_seed]
    fig, axes = plt.subplots(1, len(rs), figsize=(4.2 * len(rs), 3.6), dpi=110, sharey=True, squeeze=False)
    for ax, r in zip(axes[0], rs):
        for kind, color in (("transfer", "tab:blue"), ("scratch", "tab:orange")):
            h = r[kind]["history"]
            ax.plot([e["epoch"] for e in h], [e["val_accuracy"] for e in h], color=color, label=f"{kind} val")
            ax.plot(
                [e["epoch"] for e in h],
                [e["train_accuracy"] for e in h],
                color=color,
                alpha=0.35,
                linestyle="--",
                label=f"{kind} train",
            )
        ft = [e["epoch"] for e in r["transfer"]["history"] if e["phase"] == "finetune"]
        if ft:
            ax.axvline(ft[0] - 0.5, color="gray", linestyle=":", linewidth=1)
        ax.set_title(f"{r['images_per_class']} images/class (seed {r['seed']})")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy")
    axes[0][0].set_ylim(0, 1.02)
    axes[0][-1].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def markdown(rows: list[dict], verdict: dict, context: dict) -> str:
    lines = [
        "# Transfer learning vs training from scratch",
        "",
        f"Domain classes: {', '.join(context['classes'])}; test images: {context['test_images']}; "
        f"seeds: {', '.join(str(s) for s in context['seeds'])}. Pretrained model: `{context['pretrained']}`"
        + (
            f" (epoch {context['pretrained_epoch']}, validation accuracy {context['pretrained_val_accuracy']:.3f} on "
            "the general classes)"
            if context.get("pretrained_val_accuracy") is not None
            else ""
        )
        + ".",
        "Each job (`training.finetune`, `compare_scratch=true`) trains on N images per class, chooses its epochs on "
        "the other domain training images, and is scored on the held-out domain validation list (test accuracy). "
        "The scratch baseline trains the same architecture from random weights for the same number of epochs.",
        "",
        "| images/class | transfer test accuracy | scratch test accuracy | gain (points) | gain range "
        "| per seed (transfer / scratch) |",
        "|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        per_seed = ", ".join(f"{t:.3f} / {s:.3f}" for t, s in zip(r["transfer"]["all"], r["scratch"]["all"]))
        lines.append(
            f"| {r['images_per_class']} | {r['transfer']['mean']:.3f} | {r['scratch']['mean']:.3f} | "
            f"{100 * r['gain']['mean']:+.1f} | {100 * r['gain']['min']:+.1f} .. {100 * r['gain']['max']:+.1f} "
            f"| {per_seed} |"
        )
    lines += [
        "",
        f"**Quality bar** (transfer ≥ scratch + {100 * verdict['min_gain']:.0f} points at {verdict['gain_at']} "
        f"images/class): measured {100 * verdict['gain']:+.1f} points: "
        f"**{'met' if verdict['passed'] else 'NOT met'}**.",
        "The verdict is on the mean over seeds: single jobs scatter by several points, mostly through the scratch "
        "runs (a seed changes both the training images drawn and the initial weights).",
        "",
        "![accuracy](accuracy.png)",
        "",
        "![learning curves](learning_curves.png)",
        "",
        "Learning curves: solid lines are validation accuracy, dashed lines training accuracy (augmented images); "
        "the dotted line marks where the transfer run unfreezes its top block.",
        "",
    ]
    return "\n".join(lines)


def html_page(md_rows: list[dict], verdict: dict, context: dict) -> str:
    rows = "".join(
        f"<tr><td>{r['images_per_class']}</td><td>{r['transfer']['mean']:.3f}</td><td>{r['scratch']['mean']:.3f}</td>"
        f"<td>{100 * r['gain']['mean']:+.1f}</td></tr>"
        for r in md_rows
    )
    status = "met" if verdict["passed"] else "NOT met"
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Transfer vs scratch</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}td,th{{padding:.2em .8em;text-align:right}}</style>
</head><body><h1>Transfer learning vs training from scratch</h1>
<p>Domain classes: {html.escape(", ".join(context["classes"]))}; test images: {context["test_images"]};
seeds: {len(context["seeds"])}. Pretrained model: <code>{html.escape(context["pretrained"])}</code>.</p>
<table><tr><th>images/class</th><th>transfer test accuracy</th><th>scratch test accuracy</th>
<th>gain (points)</th></tr>{rows}</table>
<p><b>Quality bar</b> (transfer &ge; scratch + {100 * verdict["min_gain"]:.0f} points at {verdict["gain_at"]}
images/class):
measured {100 * verdict["gain"]:+.1f} points: <b>{status}</b>.</p>
<img src="accuracy.png" alt="accuracy"><br><img src="learning_curves.png" alt="learning curves">
</body></html>
"""
