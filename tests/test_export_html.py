"""The HTML report: well-formed, self-contained (no script, nothing fetched), one SVG
plot per channel, and the facts a clinician needs, in words."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest

from estim.export import export
from estim.record import SessionRecord

from .records_helpers import eight_channels, live_and_interrupted, varied_journal

VOID = {"meta", "br", "hr", "img", "input", "link", "source", "wbr", "col", "area", "base"}
SVG_EMPTY = {"line", "polyline", "circle", "path", "rect"}  # written self-closing


class Page(HTMLParser):
    """Checks nesting as it parses; collects tags, attributes, text and style."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.style = ""
        self.problems: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag not in VOID | SVG_EMPTY:
            self.problems.append(f"<{tag}/> self-closed")

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.problems.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
            return
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        if self.stack and self.stack[-1] == "style":
            self.style += data
        elif not (self.stack and self.stack[-1] == "title" and "svg" in self.stack):
            self.text.append(data)

    @property
    def words(self) -> str:
        return " ".join(" ".join(self.text).split())


def parse(record: SessionRecord) -> Page:
    data = export("html", [record]).decode("utf-8")
    assert data.startswith("<!DOCTYPE html>")
    page = Page()
    page.feed(data)
    page.close()
    assert page.problems == []
    assert page.stack == []
    return page


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> list[SessionRecord]:
    base = tmp_path_factory.mktemp("html")
    made = varied_journal(base / "estim.db")
    made.append(eight_channels(base / "eight.db"))
    made.extend(live_and_interrupted(base / "crashed.db"))
    return made


def test_every_report_is_well_formed_and_self_contained(records: list[SessionRecord]) -> None:
    for record in records:
        page = parse(record)
        names = [t for t, _ in page.tags]
        assert "script" not in names
        assert not {"iframe", "object", "embed", "img", "link", "form"} & set(names)
        for _, attrs in page.tags:
            for name, value in attrs.items():
                assert not name.startswith("on"), name  # no event handlers
                if name in ("href", "src", "action", "xlink:href"):
                    pytest.fail(f"{name}={value}: the report must fetch nothing")
        assert "url(" not in page.style
        assert "@import" not in page.style
        assert "@media print" in page.style  # print-friendly
        assert names.count("svg") == (
            len(record.plan.channels)
            if record.events and any(e.kind == "output_started" for e in record.events)
            else 0
        )


def test_the_report_says_who_where_what_and_why(records: list[SessionRecord]) -> None:
    text = parse(records[0]).words
    for fact in (
        "P-0042",
        "Dr Ada Lovelace",
        "left vastus lateralis",
        "knee osteoarthritis",
        "completed",
        "the unit's own deadline ended it",
        "the unit's own deadline",
        "1 min (60.000 s), by the unit's clock",
        "1 min, ramp 5 s up and down",
        "estim-sim, serial SIM-0001",
        "SIMULATED UNIT",
        "2 Hz alternating with 100 Hz every 3 s",
        "biphasic, symmetric",
        "12 mA",
        "14 mA",  # the highest reached on channel 1, after the operator's change
        "channel 1: amplitude set to 14 mA",
        "output off after 1 min: the dwell is complete",
        records[0].id,
    ):
        assert fact in text, fact
    assert "None" not in text
    assert "biphasic_symmetric" not in text
    assert "dense_disperse" not in text


def test_an_early_end_and_a_fault_are_plain(records: list[SessionRecord]) -> None:
    stopped = parse(records[1]).words
    assert "stopped early" in stopped
    assert "operator" in stopped
    assert "10 s (10.000 s), by the unit's clock" in stopped
    faulted = parse(records[2]).words
    assert "ended by a unit fault" in faulted
    assert "LEAD_OFF (channel 1)" in faulted
    assert "UNIT FAULT LEAD_OFF on channel 1" in faulted
    refused = parse(records[4]).words
    assert "refused: nothing was delivered" in refused
    assert "No output was delivered, so there is nothing to plot." in refused
    assert "Clinician not recorded" in refused
    burst = parse(records[3]).words
    assert "100 Hz in bursts of 0.1 s, 2 bursts a second" in burst
    assert "biphasic, asymmetric" in burst
    assert "tolerated well" in burst
    live = parse(records[6]).words
    assert "still running" in live
    assert "Output off unknown" in live


def test_each_plot_shows_planned_and_reached(records: list[SessionRecord]) -> None:
    data = export("html", [records[0]]).decode()
    plots = re.findall(r"<svg .*?</svg>", data, flags=re.S)
    assert len(plots) == 2
    for plot in plots:
        assert plot.count("<polyline") == 2  # planned (dashed) and reached
        assert 'stroke-dasharray="6 4"' in plot
    assert "set to 14 mA" in plots[0]  # the operator's change is marked
    faulted = export("html", [records[2]]).decode()
    assert "fault LEAD_OFF" in re.findall(r"<svg .*?</svg>", faulted, flags=re.S)[0]


def test_free_text_is_escaped(records: list[SessionRecord]) -> None:
    hostile = records[0].model_copy(
        update={
            "plan": records[0].plan.model_copy(
                update={"notes": '<script>alert(1)</script> & "x"', "site": "<b>knee</b>"}
            )
        }
    )
    page = parse(hostile)
    assert "script" not in [t for t, _ in page.tags]
    assert "b" not in [t for t, _ in page.tags]
    assert '<script>alert(1)</script> & "x"' in page.words
    assert "<b>knee</b>" in page.words
