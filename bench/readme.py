"""The README's "Measured" table, generated from ``bench/results.json`` and
``bench/machine.json`` (``python bench/run.py --readme``, or this file directly).

Everything between the two markers in the repository's README.md is replaced:

    <!-- bench:measured:start -->
    ...
    <!-- bench:measured:end -->

The table holds the figures marked ``headline`` in results.json (by default every
figure with a goal; a few diagnostics too; figure 6's smaller N and the watchdog's
secondary figures not) and every figure that missed its goal, headline or not
(issue 20: a missed sub-figure, such as one N of the scale run, must show); the rest
are in results.json. A loaded run (``bench/run.py --load K``: ``results-loaded.json``)
follows as a second table.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
README = HERE.parent / "README.md"
START = "<!-- bench:measured:start -->"
END = "<!-- bench:measured:end -->"


def number(x: float | None) -> str:
    if x is None:
        return "-"
    if x == 0:
        return "0"
    a = abs(x)
    if x == int(x) and a >= 1:
        return str(int(x))
    if a >= 100:
        return f"{x:.0f}"
    if a >= 10:
        return f"{x:.1f}"
    if a >= 1:
        return f"{x:.2f}"
    return f"{x:.3g}"


def render(results: list[dict[str, Any]], machine: dict[str, Any]) -> str:
    load = machine.get("loadavg_at_start") or ["?"]
    busy = machine.get("background_load") or 0
    command = f"python bench/run.py --load {busy}" if busy else "python bench/run.py"
    what = "results-loaded.json" if busy else "results.json"
    lines = [
        f"Latest {machine.get('mode', '?')} run of `{command}` "
        f"({machine.get('date_utc', '?')[:10]}, {machine.get('cpu', '?')}, "
        f"{machine.get('cores', '?')} cores, {machine.get('platform', '?')}, Python "
        f"{machine.get('python', '?')}; load average {load[0]} at the start, "
        f"{machine.get('runtime_s', '?')} s"
        + (f"; {busy} busy processes spinning for the whole run" if busy else "")
        + f"). Every figure and its baseline are in `bench/{what}` (this table is "
        "generated from it: `python bench/run.py --readme`); `bench/README.md` says what "
        "each one measures, and `bench/PROFILE.md` where the host spends its time.",
        "",
        "| figure | value | baseline (same run) | goal | met |",
        "|---|---|---|---|---|",
    ]
    for f in results:
        if not f.get("headline") and f.get("met") is not False:
            continue
        title = f.get("title") or f["name"]
        unit = f["unit"]
        if f.get("error"):
            value = f"FAILED: {f['error']}"
        elif f["value"] is None:
            value = "skipped"
        else:
            value = f"{number(f['value'])} {unit}"
        baseline = (
            f"{number(f['baseline'])} ({f['baseline_name']})"
            if f["baseline"] is not None
            else f["baseline_name"]
        )
        met = {True: "yes", False: "**no**", None: "-"}[f["met"]]
        cells = [title, value, baseline, f["goal"], met]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def update(readme: Path = README) -> bool:
    """Rewrite the table in ``readme``; False (and the table on stdout) if the markers
    are missing."""
    results = json.loads((HERE / "results.json").read_text())
    machine = json.loads((HERE / "machine.json").read_text())
    table = render(results, machine)
    if (HERE / "results-loaded.json").exists():  # the loaded run, under its own heading
        loaded = json.loads((HERE / "results-loaded.json").read_text())
        loaded_machine = json.loads((HERE / "machine-loaded.json").read_text())
        table += "\n\nThe same figures on a loaded machine:\n\n" + render(loaded, loaded_machine)
    text = readme.read_text()
    if START not in text or END not in text:
        print(table)
        print(f"no {START} ... {END} markers in {readme}", file=sys.stderr)
        return False
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{START}\n{table}\n{END}{tail}"
    if new != text:
        readme.write_text(new)
    print(
        f"wrote the table ({sum(1 for line in table.splitlines() if line.startswith('| '))} rows) into {readme}"
    )
    return True


if __name__ == "__main__":
    sys.exit(0 if update() else 1)
