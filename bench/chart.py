"""bench/results.png from bench/results.json: the same figures as the printed table.

`python -m bench.chart` redraws it from the last results without measuring again.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


# Drain bars, in order: key in results.json -> (label, colour). Baselines grey, Pushline green.
DRAIN_BARS = {
    "textbook_1": ("textbook\n1 proc", "#bbbbbb"),
    "textbook_2": ("textbook\n2 procs", "#999999"),
    "batch_1": ("batch\nbaseline\n1 proc", "#777777"),
    "batch_2": ("batch\nbaseline\n2 procs", "#555555"),
    "drain_1": ("Pushline\n1 worker\n-c 1", "#98df8a"),
    "drain_2": ("Pushline\n2 workers\n-c 1", "#2ca02c"),
    "drain_mixed_2": ("Pushline\n2 workers\n-c 1, mixed\n+ webhooks", "#17becf"),
    "drain_c2": ("Pushline\n1 worker\n-c 2", "#1b7a1b"),
    "drain_c2_threads": ("Pushline\n1 worker\n-P threads\n-c 2", "#7fbf7f"),
}
WIDTHS = {"ack": 5.2, "drain": 9.5, "lag": 5.2}


def draw(results: dict, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    panels = [p for p in ("ack", "drain", "lag") if _has(results, p)]
    widths = [WIDTHS[p] for p in panels] or [5.2]
    fig, axes = plt.subplots(1, len(widths), figsize=(sum(widths), 4.8), gridspec_kw={"width_ratios": widths})
    axes = axes if len(panels) > 1 else [axes]
    for ax, panel in zip(axes, panels, strict=False):
        {"ack": _ack, "drain": _drain, "lag": _lag}[panel](ax, results)
    cores = results.get("machine", {}).get("cores", "?")
    fig.suptitle(f"Pushline make bench, {cores} cores, {results.get('when', '')[:16].replace('T', ' ')} UTC")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _has(results: dict, panel: str) -> bool:
    return {"ack": "ack" in results, "drain": "drain_ratios" in results, "lag": "lag" in results}[panel]


def _bars(ax, labels, values, colors, fmt="{:,.0f}"):
    bars = ax.bar(labels, values, color=colors)
    for bar, value in zip(bars, values, strict=True):
        ax.annotate(fmt.format(value), (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=8)
    ax.tick_params(axis="x", labelsize=7)


def _ack(ax, r):
    a = r["ack"]
    _bars(ax, ["no-op Flask\ngthread 4x4\n(reference)", "POST /push", "paced at\n0.6 x ref"],
          [a["reference_rps"], a["pushline_rps"], a["paced_rps"]], ["#999999", "#1f77b4", "#aec7e8"])
    ax.set_ylabel("requests/s")
    ax.set_title(f"ack path: ratio {a['ratio']:.2f} (goal >= 0.75)\np99 at 0.6 x ref {a['paced_p99_ms']:.1f} ms "
                 "(goal < 20 ms)", fontsize=9)


def _drain(ax, r):
    shown = [k for k in DRAIN_BARS if k in r]
    _bars(ax, [DRAIN_BARS[k][0] for k in shown], [r[k]["events_per_s"] for k in shown],
          [DRAIN_BARS[k][1] for k in shown])
    ax.set_yscale("log")
    ax.set_ylabel("events/s (log scale)")
    d = r["drain_ratios"]
    ax.set_title(f"drain of {r['drain_2']['events']:,} queued events: 2 workers = {d['two_workers_vs_batch']}x the "
                 f"batch baseline (2 procs),\n{d['two_workers_vs_textbook']}x the textbook (goal 20x), "
                 f"{d['two_workers_vs_one']}x one worker (goal 1.6x); 1 worker -c 2 = {d['c2_vs_two_workers']}x "
                 "2 workers" + _mixed_note(d), fontsize=9)


def _mixed_note(d: dict) -> str:
    if "mixed_vs_push_api" not in d:
        return ""
    return (f";\nmixed stream (half webhooks) = {d['mixed_vs_push_api']:.2f}x the Push API alone, 2 workers each "
            "(goal >= 0.85)")


def _lag(ax, r):
    lg = r["lag"]
    _bars(ax, ["p50", "p99"], [lg["p50_ms"], lg["p99_ms"]], ["#ff7f0e", "#d62728"], fmt="{:,.1f} ms")
    ax.set_ylabel("ms from 202 to the row being visible")
    rss = []
    if "ack" in r:
        rss.append(f"web {r['ack']['web_peak_rss_mb']:.0f} MB")
    if "drain_2" in r:
        rss.append(f"worker {r['drain_2']['worker_peak_rss_mb']:.0f} MB")
    ax.set_title(f"lag at {lg['sent_rps']:,} req/s (goal p99 < 1 s)\npeak RSS: {', '.join(rss)} (goal worker "
                 "< 200 MB)", fontsize=9)


def main() -> int:
    results = json.loads((ROOT / "bench" / "results.json").read_text())
    print(f"written: {draw(results, ROOT / 'bench' / 'results.png').relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
