"""Markdown tables from a bench_baseline.py result, ready to paste into docs/performance.md.

    python bench/baseline_report.py bench/out/baseline-<time>.json    # print them again from the JSON

Ratios are B/A (B = this checkout, A = the baseline commit): above 1 means B does more (docs/s,
questions/s); for latencies A/B is given as the speed-up, so above 1 always means B is better.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _f(v: float | None, fmt: str = ".1f") -> str:
    return "n/a" if v is None else format(v, fmt)


def _ratio(num: float | None, den: float | None) -> str:
    if not num or not den:
        return "n/a"
    return f"{num / den:.2f}x"


def markdown(r: dict[str, Any]) -> str:
    m = r["meta"]
    a_c, b_c = m["A"]["commit"][:9], m["B"]["commit"][:9] + ("+dirty" if m["B"].get("dirty") else "")
    b_c += "".join(f" {k}={v}" for k, v in m["B"].get("env", {}).items())
    lines = [
        f"Run {m['date_utc']} UTC, {m.get('cpus')} CPUs, load average at start "
        f"{', '.join(f'{x:.1f}' for x in m['loadavg_at_start'])}; A = {a_c} (baseline), B = {b_c}; "
        f"`{m.get('command', 'python bench/bench_baseline.py')}` ({m.get('seconds', 0) / 60:.0f} min).",
        "",
        f"| measure | A {a_c} | B {b_c} | B vs A |",
        "| --- | --- | --- | --- |",
    ]
    ing = r.get("ingest", {})
    if ing:
        a, b = ing["A"], ing["B"]
        lines += [
            f"| ingest: SciFact documents | {a['documents']} | {b['documents']} | |",
            f"| ingest: seconds | {a['seconds']:.1f} | {b['seconds']:.1f} | |",
            f"| ingest: docs/s | {a['docs_per_s']:.2f} | {b['docs_per_s']:.2f} | "
            f"{_ratio(b['docs_per_s'], a['docs_per_s'])} |",
            f"| ingest: chunks written / chunks/s | {a['chunks']} / {a['chunks_per_s']:.1f} | "
            f"{b['chunks']} / {b['chunks_per_s']:.1f} | {_ratio(b['chunks_per_s'], a['chunks_per_s'])} |",
            f"| optimize after ingest, s | {a['optimize']['seconds']:.1f} | "
            f"{b['optimize']['seconds']:.1f} | |",
        ]
    levels = r.get("levels", {})
    for c in sorted(levels.get("A", {}), key=int):
        a, b = levels["A"][c], levels["B"][c]
        lines += [
            f"| HTTP cache miss, {c} in flight: P50 / P99 ms | {a['p50_ms']:.1f} / {a['p99_ms']:.1f} | "
            f"{b['p50_ms']:.1f} / {b['p99_ms']:.1f} | P50 {_ratio(a['p50_ms'], b['p50_ms'])} faster, "
            f"P99 {_ratio(a['p99_ms'], b['p99_ms'])} |",
            f"| questions/s at {c} in flight | {a['qps']:.1f} | {b['qps']:.1f} | "
            f"{_ratio(b['qps'], a['qps'])} |",
        ]
    if levels:
        top = max(levels["A"], key=int)
        lines.append(
            f"| (questions per fleet at {top} in flight; failed) | {levels['A'][top]['n']}; "
            f"{levels['A'][top]['failed']} | {levels['B'][top]['n']}; {levels['B'][top]['failed']} | |"
        )
        seg_a, seg_b = (
            levels["A"].get("1", {}).get("segments_p50_ms"),
            levels["B"].get("1", {}).get("segments_p50_ms"),
        )
        if seg_a and seg_b:
            lines += [
                "",
                "Where one question's time goes at 1 in flight (P50 of each segment, ms; "
                "job record timestamps):",
                "",
                "| segment | A | B |",
                "| --- | --- | --- |",
            ]
            lines += [f"| {k} | {seg_a[k]:.2f} | {seg_b[k]:.2f} |" for k in seg_a]
    qual = r.get("quality")
    if qual:
        a, b = qual["A"], qual["B"]
        lines += [
            "",
            f"Dev nDCG@10 through the API ({qual['questions']} questions, answered A {a['answered']}, "
            f"B {b['answered']}; top 100 chunks -> documents): "
            f"A {a['ndcg_at_10']:.4f}, B {b['ndcg_at_10']:.4f} "
            f"(B - A {b['ndcg_at_10'] - a['ndcg_at_10']:+.4f}); mean top-10 document overlap "
            f"{qual['top10_doc_overlap_mean']:.3f} (each fleet on its own chunks).",
        ]
    cpu = r.get("cpu_ms_per_question", {})
    if cpu:
        top = max(levels["A"], key=int) if levels else "?"
        lines += [
            "",
            f"CPU per question at {top} in flight (ms of utime+stime; /proc, summed over the saturated "
            "turns; Redis is the machine's shared server, so its delta includes anything else using it "
            "in the window; `machine` is every process, other tenants included):",
            "",
            "| process group | A ms/question | B ms/question |",
            "| --- | --- | --- |",
        ]
        for k in list(dict.fromkeys([*cpu["A"], *cpu["B"]])):
            lines.append(f"| {k} | {_f(cpu['A'].get(k), '.2f')} | {_f(cpu['B'].get(k), '.2f')} |")
    fl = r.get("floors", {})
    if fl:
        lines += [
            "",
            "Stage floors (each fleet's own code called directly on its own index, one process, "
            "P50 / P99 ms):",
            "",
            "| stage | A | B |",
            "| --- | --- | --- |",
        ]
        for k in (
            "encode",
            "torch_encode_1_thread",
            "search_hybrid",
            "search_vector",
            "search_fts",
            "redis_ping",
            "redis_get",
            "celery_noop",
        ):
            cells = [
                f"{fl[n][k]['p50_ms']:.2f} / {fl[n][k]['p99_ms']:.2f}" if k in fl[n] else "-"
                for n in ("A", "B")
            ]
            lines.append(f"| {k} | {cells[0]} | {cells[1]} |")
        lines.append(
            f"| encoder / store | {fl['A']['encoder_class']} / {fl['A']['store_class']} | "
            f"{fl['B']['encoder_class']} / {fl['B']['store_class']} |"
        )
        lines.append(f"| chunks in the index | {fl['A']['chunks']} | {fl['B']['chunks']} |")
    mem = r.get("memory", {})
    if mem:
        lines += [
            "",
            "Memory after the queries (MB; PSS counts shared pages once across the processes mapping them):",
            "",
            "| fleet | process | PSS | RSS | libtorch mapped |",
            "| --- | --- | --- | --- | --- |",
        ]
        for n in ("A", "B"):
            for p in mem.get(n, []):
                lines.append(
                    f"| {n} | {p['label']} | {p.get('pss_kb', 0) / 1024:.0f} | "
                    f"{p.get('rss_kb', 0) / 1024:.0f} | {'yes' if p['libtorch_mapped'] else 'no'} |"
                )
            total = sum(p.get("pss_kb", 0) for p in mem.get(n, [])) / 1024
            lines.append(f"| {n} | **all processes** | {total:.0f} | | |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown(json.loads(Path(sys.argv[1]).read_text())))
