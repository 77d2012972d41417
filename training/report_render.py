"""The report's pages and figures: accuracy against images per class, learning curves, Markdown and HTML."""

from __future__ import annotations

import html
from pathlib import Path

RECIPE_COLOURS = {"linear_probe": "tab:green", "top_blocks": "tab:purple", "full": "tab:blue"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_accuracy(rows: list[dict], path: Path, domain: str = "") -> None:
    plt = _pyplot()
    x = [r["images_per_class"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    series = [("transfer", "tab:blue", "transfer (kept recipe)"), ("scratch", "tab:orange", "from scratch")]
    if all(r.get("linear_probe") for r in rows):
        series.append(("linear_probe", "tab:green", "linear probe (backbone features)"))
    for kind, color, label in series:
        mean = [r[kind]["mean"] for r in rows]
        lo = [max(0.0, r[kind]["mean"] - r[kind]["min"]) for r in rows]  # equal values: no negative rounding
        hi = [max(0.0, r[kind]["max"] - r[kind]["mean"]) for r in rows]
        ax.errorbar(x, mean, yerr=[lo, hi], marker="o", capsize=4, color=color, label=label)
    ax.set_xscale("log")
    ax.set_xticks(x)
    ax.set_xticklabels([str(v) for v in x])
    ax.set_xlabel("training images per class")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"{domain or 'domain'}: transfer vs scratch (mean, min-max over seeds)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_curves(results: list[dict], path: Path, domain: str = "") -> None:
    plt = _pyplot()
    first_seed = min(r["seed"] for r in results)
    rs = [r for r in results if r["seed"] == first_seed]
    fig, axes = plt.subplots(1, len(rs), figsize=(4.2 * len(rs), 3.6), dpi=110, sharey=True, squeeze=False)
    for ax, r in zip(axes[0], rs):
        curves = {
            f"transfer[{k}]": (c["history"], RECIPE_COLOURS.get(k, "tab:blue")) for k, c in r["candidates"].items()
        }
        if not curves:
            curves["transfer"] = (r["transfer"]["history"], "tab:blue")
        curves["scratch"] = (r["scratch"]["history"], "tab:orange")
        for label, (h, color) in curves.items():
            kept = label == f"transfer[{r.get('recipe')}]" or label == "scratch"
            ax.plot(
                [e["epoch"] for e in h],
                [e["val_accuracy"] for e in h],
                color=color,
                linewidth=2 if kept else 1,
                label=label + (" (kept)" if label.startswith("transfer[") and kept else ""),
            )
        ax.set_title(f"{domain} {r['images_per_class']}/class (seed {r['seed']})")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("validation accuracy")
    axes[0][0].set_ylim(0, 1.02)
    axes[0][-1].legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def verdict_text(v: dict) -> str:
    status = "met" if v["passed"] else "NOT met"
    if v["rule"] == "gain":
        return (
            f"transfer ≥ scratch + {100 * v['min_gain']:.0f} points at {v['gain_at']} images/class: measured "
            f"{100 * v['gain']:+.1f} points: **{status}**"
        )
    return (
        f"transfer ≥ scratch at {v['smallest']} images/class (measured {100 * v['gain_smallest']:+.1f} points) and "
        f"within {100 * v['margin']:.0f} point of it at {v['gain_at']} (measured {100 * v['gain']:+.1f}): **{status}**"
    )


def _domain_section(name: str, d: dict) -> list[str]:
    c, v = d["context"], d["verdict"]
    lines = [
        f"## {name}",
        "",
        f"Classes: {', '.join(c['classes'])}; test images: {c['test_images']}; seeds: "
        f"{', '.join(str(s) for s in c['seeds'])}; {c['job_seconds']['mean']:.0f} s per fine-tuning job (recipe search "
        f"and baseline included; {c['job_seconds']['min']:.0f} .. {c['job_seconds']['max']:.0f} s).",
        "",
        "| images/class | transfer (kept recipe) | scratch | gain (points) | gain range | linear probe "
        "| recipes kept | per seed (transfer / scratch) |",
        "|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in d["summary"]:
        per_seed = ", ".join(f"{t:.3f} / {s:.3f}" for t, s in zip(r["transfer"]["all"], r["scratch"]["all"]))
        probe = f"{r['linear_probe']['mean']:.3f}" if r.get("linear_probe") else "—"
        lines.append(
            f"| {r['images_per_class']} | {r['transfer']['mean']:.3f} | {r['scratch']['mean']:.3f} | "
            f"{100 * r['gain']['mean']:+.1f} | {100 * r['gain']['min']:+.1f} .. {100 * r['gain']['max']:+.1f} "
            f"| {probe} | {', '.join(str(x) for x in r['recipes'])} | {per_seed} |"
        )
    lines += [
        "",
        f"**Verdict**: {verdict_text(v)}.",
        "",
        f"![accuracy](accuracy_{name}.png)",
        "",
        f"![learning curves](learning_curves_{name}.png)",
        "",
    ]
    return lines


def markdown(doc: dict) -> str:
    first = next(iter(doc.values()))["context"]
    lines = [
        "# Transfer learning vs training from scratch",
        "",
        f"Pretrained model: `{first['pretrained']}`"
        + (
            f" (epoch {first['pretrained_epoch']}, validation accuracy {first['pretrained_val_accuracy']:.3f} on "
            "the general classes)"
            if first.get("pretrained_val_accuracy") is not None
            else ""
        )
        + ".",
        "Each job (`training.finetune`, `compare_scratch=true`) trains on N images per class, chooses its recipe "
        "(linear probe, top blocks, full fine-tuning with discriminative learning rates) and its epochs on other "
        "pool images, and is scored on the domain's held-out test images. The scratch baseline trains the same "
        "architecture from random weights for the same number of epochs. *Linear probe* is the backbone's "
        "representation quality: the test accuracy of a softmax head on its frozen features.",
        "",
    ]
    for name, d in doc.items():
        lines += _domain_section(name, d)
    lines += [
        "Verdicts are on the mean over seeds: single jobs scatter by several points, mostly through the scratch runs "
        "(a seed changes both the training images drawn and the initial weights). Learning curves: validation "
        "accuracy per epoch of every recipe of the first seed (the kept one thicker) and of the baseline.",
        "",
    ]
    return "\n".join(lines)


def html_page(doc: dict) -> str:
    sections = []
    for name, d in doc.items():
        rows = "".join(
            f"<tr><td>{r['images_per_class']}</td><td>{r['transfer']['mean']:.3f}</td>"
            f"<td>{r['scratch']['mean']:.3f}</td><td>{100 * r['gain']['mean']:+.1f}</td>"
            f"<td>{(r.get('linear_probe') or {}).get('mean', float('nan')):.3f}</td></tr>"
            for r in d["summary"]
        )
        verdict = html.escape(verdict_text(d["verdict"])).replace("**", "")
        sections.append(
            f"<h2>{html.escape(name)}</h2><p>Classes: {html.escape(', '.join(d['context']['classes']))}; test images: "
            f"{d['context']['test_images']}.</p><table><tr><th>images/class</th><th>transfer</th><th>scratch</th>"
            f"<th>gain (points)</th><th>linear probe</th></tr>{rows}</table><p><b>Verdict</b>: {verdict}.</p>"
            f'<img src="accuracy_{name}.png" alt="accuracy"><br>'
            f'<img src="learning_curves_{name}.png" alt="learning curves">'
        )
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Transfer vs scratch</title>
<style>body{{font-family:sans-serif;max-width:70em;margin:2em auto}}td,th{{padding:.2em .8em;text-align:right}}</style>
</head><body><h1>Transfer learning vs training from scratch</h1>{"".join(sections)}</body></html>
"""
