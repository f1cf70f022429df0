"""Compare several losses (and seeds): one run each, then a table of the reported epochs and comparison plots."""

import copy
import csv
import json
import os
import statistics

from . import plots
from .history import metric_label
from .runner import run


def compare(cfg):
    """Run every loss of ``cfg.losses`` for every seed of ``cfg.seeds`` (each in ``<output>/<loss>[/seed<s>]``),
    print a table of the reported epochs' test metrics (mean ± std over seeds) and write
    ``comparison.{json,csv,md}``, ``comparison.png`` (metrics per epoch) and ``comparison_maps.png`` (the maps)."""
    output = cfg.output or os.path.join("runs", f"{cfg.dataset}_compare")
    results = {}
    for name in cfg.losses:
        for seed in cfg.seeds:
            sub = copy.copy(cfg)
            sub.loss, sub.seed = name, seed
            sub.output = os.path.join(output, name, f"seed{seed}") if len(cfg.seeds) > 1 else os.path.join(output, name)
            results.setdefault(name, []).append(run(sub))
    table = comparison_table(results)
    os.makedirs(output, exist_ok=True)
    markdown = table_markdown(table, cfg)
    print("\n" + markdown)
    with open(os.path.join(output, "comparison.md"), "w") as f:
        f.write(markdown + "\n")
    with open(os.path.join(output, "comparison.json"), "w") as f:
        json.dump({"config": vars(cfg), "table": table}, f, indent=2, default=str)
    with open(os.path.join(output, "comparison.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        columns = list(dict.fromkeys(m for row in table.values() for m in row["metrics"]))
        writer.writerow(["loss", "space", "epoch", *[f"{c}_mean" for c in columns], *[f"{c}_std" for c in columns]])
        for name, row in table.items():
            values = [row["metrics"].get(c, ("", "")) for c in columns]
            epochs = " ".join(str(e) for e in row["epoch"])  # the reported epoch of each seed
            writer.writerow([name, row["space"], epochs, *[v[0] for v in values], *[v[1] for v in values]])
    plots.plot_comparison({k: v[0]["history"] for k, v in results.items()}, os.path.join(output, "comparison.png"))
    plots.save_map_grid({k: v[0]["map"] for k, v in results.items()}, os.path.join(output, "comparison_maps.png"))
    print(f"\nResults, plots, logs and checkpoints: {output}/ (comparison.md, comparison.png, comparison_maps.png)")
    return table


def comparison_table(results):
    """{loss: {"space", "epoch", "selected_by", "metrics": {metric: (mean, std)}, "time_s"}} from the runs'
    reported epochs (``result``)."""
    table = {}
    for name, runs in results.items():
        space = next(iter(runs[0]["eval_spaces"]))
        reported = [r["result"] for r in runs]
        metrics = {m: [row[space][m] for row in reported] for m in reported[0][space]}
        for part in ("class_means", "lca_proxies"):
            for metric in ("sibling_precision", "tree_rank_correlation"):
                values = [r.get("hierarchy", {}).get(part, {}).get(metric) for r in runs]
                if all(v is not None for v in values):
                    metrics[f"{part}/{metric}"] = values
        reference = {}
        for part in ("proxies", "class_means"):
            figures = [r.get("hierarchy", {}).get("dasgupta", {}).get(part) for r in runs]
            if all(f is not None for f in figures):
                metrics[f"dasgupta/{part}"] = [f["decoded"] for f in figures]
                reference[part] = {k: figures[0][k] for k in ("best", "random")}
        table[name] = {
            "space": space,
            "epoch": [row["epoch"] for row in reported],
            "selected_by": reported[0]["selected_by"],
            "metrics": {m: (statistics.fmean(v), statistics.pstdev(v)) for m, v in metrics.items()},
            "time_s": statistics.fmean(r["wall_time_s"] for r in runs),
            "dasgupta_reference": reference,
        }
    return table


def table_markdown(table, cfg):
    columns = list(dict.fromkeys(m for row in table.values() for m in row["metrics"]))
    seeds = f"{len(cfg.seeds)} seeds, mean ± std" if len(cfg.seeds) > 1 else f"seed {cfg.seeds[0]}"
    selected = next(iter(table.values()))["selected_by"]
    if selected == "last epoch":
        when = f"last epoch ({cfg.epochs})"
    else:
        when = f"epoch selected on the held-out validation classes by {selected.removeprefix('validation ')}"
    header = f"{cfg.dataset}: test classes unseen in training; {when} ({seeds}); Recall@K and MAP@R in %"
    if any("mistake_severity" in c for c in columns):
        header += "; severity and hdist: tree levels (lower is better)"
    reference = next((row["dasgupta_reference"] for row in table.values() if row["dasgupta_reference"]), {})
    if reference:
        header += (
            "; Dasgupta: cost of the tree decoded from the class proxies (training classes) or the test class means, "
            "relative to the true tree's (lower is better; "
            + ", ".join(f"{'proxies' if part == 'proxies' else 'means'}: best binary tree {r['best']:.3f}, random "
                        f"trees {r['random']:.3f}" for part, r in reference.items()) + ")"
        )  # fmt: skip
    lines = [
        header,
        "",
        "| loss | evaluated in | " + " | ".join(metric_label(c) for c in columns) + " | time (s) |",
        "|---|---|" + "---|" * len(columns) + "---|",
    ]
    for name, row in table.items():
        cells = []
        for c in columns:
            if c not in row["metrics"]:
                cells.append("")
                continue
            mean, std = row["metrics"][c]
            scale = (
                100 if c.startswith(("recall_at_", "mean_average_precision")) or c.endswith("sibling_precision") else 1
            )
            digits = 2 if scale == 100 else 3
            cells.append(f"{scale * mean:.{digits}f}" + (f" ± {scale * std:.{digits}f}" if len(cfg.seeds) > 1 else ""))
        lines.append(f"| {name} | {row['space']} | " + " | ".join(cells) + f" | {row['time_s']:.0f} |")
    return "\n".join(lines)
