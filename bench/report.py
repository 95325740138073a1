"""The benchmark's report: medians over repetitions, one table with eXtremail's ratio to
each peer, the issue's targets, ``latest.json`` and ``latest.png``.

``latest.json`` holds one object per scenario letter with each server's median in the
scenario's headline unit (``{"b": {"unit": "msg/s", "extremail": x, "postfix": y,
"aiosmtpd": z}}``; (f) compares with ``dovecot``; (h) is MB of memory), and beside them
``details`` (every figure of every row and server), ``targets``, ``machine`` and ``run``.
"""

from __future__ import annotations

import json
import os
import statistics

from .scenarios import Result, Scenario

SERVERS = ("extremail", "postfix", "aiosmtpd", "dovecot")
METRICS = (("msg_per_s", "msg/s"), ("MB_per_s", "MB/s"), ("p50_ms", "p50 ms"),
           ("p99_ms", "p99 ms"), ("memory_MB", "peak MB"), ("cpu_ms_per_msg", "CPU ms/msg"),
           ("client_cpu_ms_per_msg", "loadgen CPU ms/msg"))
# POP3 rows also time their logins, apart from the RETRs: printed after the RETRs' p99.
LOGIN_METRICS = (("login_p50_ms", "login p50 ms"), ("login_p99_ms", "login p99 ms"))

# The targets: (scenario letter, figure, peer, factor, "min" or "max" or "abs").
TARGETS = (
    ("a", "msg_per_s", "postfix", 1.5, "min"),
    ("b", "msg_per_s", "postfix", 1.5, "min"),
    ("c", "msg_per_s", "postfix", 1.0, "min"),
    ("c", "msg_per_s", "aiosmtpd", 3.0, "min"),
    ("d", "msg_per_s", "postfix", 1.0, "min"),
    ("e", "msg_per_s", "postfix", 1.0, "min"),
    ("b", "p99_ms", "postfix", 1.0, "max"),
    ("f", "msg_per_s", "dovecot", 0.8, "min"),
    ("h", "memory_MB", None, 80.0, "abs"),
)


def medians(results: dict[str, dict[str, list[Result]]]) -> dict[str, dict[str, dict]]:
    """{row key: {server: {figure: median over the repetitions}}}; a row that failed in
    any repetition keeps its first error instead."""
    table: dict[str, dict[str, dict]] = {}
    for key, by_server in results.items():
        for server, runs in by_server.items():
            failed = [run.error for run in runs if run.error]
            table.setdefault(key, {})[server] = ({"error": failed[0]} if failed
                                                 else _median_figures(runs))
    return table


def _median_figures(runs: list[Result]) -> dict:
    figures = [run.figures() for run in runs]
    merged: dict = {}
    for name in figures[0]:
        values = [one[name] for one in figures if one[name] is not None]
        merged[name] = _round(statistics.median(values)) if values else None
    merged["repetitions"] = len(runs)
    return merged


def headline(rows: list[Scenario], details: dict, results: dict) -> dict[str, dict]:
    """One object per scenario letter in its headline unit.  A letter with several rows
    ((f): one session, then many) is their messages over their summed time (in (f) the
    time from the last login to the last RETR), per repetition, then the median."""
    out: dict[str, dict] = {}
    for row in rows:
        entry = out.setdefault(row.letter, {"unit": "MB" if row.kind == "idle" else "msg/s"})
        for server, figures in details.get(row.key, {}).items():
            if "error" in figures:
                entry[server] = None
            elif row.kind == "idle":
                entry[server] = _round(figures["memory_MB"])
    for letter, entry in out.items():
        if entry["unit"] != "msg/s":
            continue
        keys = [row.key for row in rows if row.letter == letter]
        servers = {server for key in keys for server in results.get(key, {})}
        for server in sorted(servers, key=SERVERS.index):
            runs = [results[key].get(server, []) for key in keys]
            if any(run.error for runs_of_row in runs for run in runs_of_row) or not all(runs):
                entry[server] = None
                continue
            rates = [sum(r.messages for r in rep) / sum(r.seconds for r in rep)
                     for rep in zip(*runs, strict=True)]
            entry[server] = _round(statistics.median(rates))
    return dict(sorted(out.items()))


def _round(value: float | None) -> float | None:
    if value is None:
        return None
    return round(value, 3 if abs(value) < 10 else 1)


def targets(scores: dict[str, dict], details: dict) -> list[dict]:
    """Each of the issue's targets with eXtremail's figure, the bound and whether it is met."""
    checks = []
    for letter, figure, peer, factor, how in TARGETS:
        if how == "abs":
            ours, bound = scores.get(letter, {}).get("extremail"), factor
            text = f"({letter}) eXtremail under {factor:g} MB"
        elif figure == "msg_per_s":
            ours = scores.get(letter, {}).get("extremail")
            theirs = scores.get(letter, {}).get(peer)
            bound = theirs * factor if theirs else None
            text = f"({letter}) throughput >= {factor:g} x {peer}"
        else:
            ours = details.get(letter, {}).get("extremail", {}).get(figure)
            theirs = details.get(letter, {}).get(peer, {}).get(figure)
            bound = theirs * factor if theirs else None
            text = f"({letter}) {figure} <= {peer}'s"
        met = None
        if ours is not None and bound is not None:
            met = ours <= bound if how in ("max", "abs") else ours >= bound
        checks.append({"target": text, "extremail": _round(ours), "bound": _round(bound),
                       "met": met})
    return checks


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return "FAIL"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}" if value < 10 else f"{value:.1f}"


def table(rows: list[Scenario], details: dict, servers: list[str]) -> str:
    """The one table: every figure per row and server, and eXtremail's ratio to each peer."""
    peers = [server for server in servers if server != "extremail"]
    head = ["row", "figure", *servers, *[f"xm/{peer}" for peer in peers]]
    lines = [head]
    for row in rows:
        by_server = details.get(row.key, {})
        metrics = _metrics(row)
        for name, label in metrics:
            values = {}
            for server in servers:
                figures = by_server.get(server)
                values[server] = (None if figures is None else
                                  figures["error"] if "error" in figures else figures.get(name))
            ours = values.get("extremail")
            ratios = []
            for peer in peers:
                theirs = values.get(peer)
                ok = isinstance(ours, float | int) and isinstance(theirs, float | int) and theirs
                ratios.append(f"{ours / theirs:.2f}" if ok else "")
            lines.append([f"{row.key}" if name == metrics[0][0] else "", label,
                          *[_cell(values[server]) for server in servers], *ratios])
    widths = [max(len(line[col]) for line in lines) for col in range(len(head))]
    text = ["  ".join(cell.rjust(width) if col > 1 else cell.ljust(width)
                      for col, (cell, width) in enumerate(zip(line, widths, strict=True)))
            for line in lines]
    text.insert(1, "-" * len(text[0]))
    return "\n".join(text)


def _metrics(row: Scenario) -> list[tuple[str, str]]:
    """The figures the table shows for ``row``, with their labels."""
    if row.kind == "idle":
        return [("memory_MB", "MB with idle")]
    if row.kind != "pop3":
        return list(METRICS)
    after = [name for name, _ in METRICS].index("p99_ms") + 1
    return [*METRICS[:after], *LOGIN_METRICS, *METRICS[after:]]


def errors(details: dict) -> list[str]:
    return [f"{key} {server}: {figures['error']}"
            for key, by_server in details.items() for server, figures in by_server.items()
            if "error" in figures]


def write_json(path: str, scores: dict, details: dict, checks: list[dict], machine: dict,
               run: dict) -> None:
    document = dict(scores)
    document.update({"details": details, "targets": checks, "machine": machine, "run": run})
    temp = path + ".tmp"
    with open(temp, "w") as handle:
        json.dump(document, handle, indent=1, sort_keys=False)
        handle.write("\n")
    os.replace(temp, path)


def write_png(path: str, scores: dict) -> str | None:
    """One panel per scenario: each server's headline figure.  Returns why not, if not."""
    try:
        import matplotlib
    except ImportError:
        return "matplotlib is not installed (bench/run installs it)"
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    letters = list(scores)
    colours = {"extremail": "#d62728", "postfix": "#1f77b4", "aiosmtpd": "#2ca02c",
               "dovecot": "#9467bd"}
    fig, axes = plt.subplots(1, len(letters), figsize=(2.2 * len(letters), 3.6))
    for axis, letter in zip(axes if len(letters) > 1 else [axes], letters, strict=True):
        entry = scores[letter]
        names = [name for name in SERVERS if name in entry]
        values = [entry[name] or 0 for name in names]
        bars = axis.bar(range(len(names)), values, color=[colours[name] for name in names])
        axis.bar_label(bars, labels=[f"{value:,.0f}" if value >= 10 else f"{value:.2g}"
                                     for value in values], fontsize=7)
        axis.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
        axis.set_title(f"({letter}) {entry['unit']}", fontsize=10)
        axis.tick_params(axis="y", labelsize=8)
    fig.suptitle("eXtremail and its peers: throughput per scenario ((h): memory, lower is better)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return None


def markdown(document: dict) -> str:
    """The README's table of a ``latest.json``: headline medians, ratios and targets."""
    rows = document["run"]["rows"]
    lines = ["| scenario | unit | eXtremail | Postfix | aiosmtpd | Dovecot | eXtremail/peer |",
             "| --- | --- | ---: | ---: | ---: | ---: | --- |"]
    for letter, entry in document.items():
        if len(letter) != 1:
            continue
        titles = "; ".join(title for key, title in rows.items() if key.startswith(letter))
        ours = entry.get("extremail")
        ratios = ", ".join(f"{ours / entry[peer]:.2f}x {peer}" for peer in SERVERS[1:]
                           if entry.get(peer) and ours)
        cells = [_cell(entry.get(name)) if name in entry else "" for name in SERVERS]
        lines.append(f"| ({letter}) {titles} | {entry['unit']} | " + " | ".join(cells)
                     + f" | {ratios} |")
    lines += ["", "| target | eXtremail | bound | met |", "| --- | ---: | ---: | --- |"]
    for check in document["targets"]:
        verdict = {True: "yes", False: "**no**", None: "not measured"}[check["met"]]
        lines.append(f"| {check['target']} | {_cell(check['extremail'])} | "
                     f"{_cell(check['bound'])} | {verdict} |")
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    with open(sys.argv[1] if len(sys.argv) > 1 else
              os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                           "latest.json")) as handle:
        print(markdown(json.load(handle)))
