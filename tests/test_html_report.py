"""``drhost report RUN``: one self-contained HTML file, drawn by its own script in a real headless Chromium.

One real demo run feeds every test: four local targets in four batches (``rollout.serial = 1, 50%``; dr-demo-1
in a group whose name is markup), a retried step on dr-demo-1, a timed-out step on dr-demo-2, a failed step on
dr-demo-3 that is rolled back and stops the rollout (``max_failed = 0``), so dr-demo-4 never starts.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import struct
import subprocess
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from cli_helpers import CLI_TIMEOUT_S, pids_under

pytestmark = [pytest.mark.podman, pytest.mark.slow, pytest.mark.integration]

HOSTILE = 'a<b>&"c'
SECRET_NAME = "DRHOST_REPORT_SECRET_ENV_NAME"
RUN_ARGS = (
    "upgrade", "--demo", "--demo-targets", "4", "--plain", "--on-failure", "rollback",
    "--set", "rollout.serial=1, 50%", "--set", "rollout.max_failed=0",
    "--set", f"target.dr-demo-1.group={HOSTILE}",
    "--set", f"target.dr-demo-2.password_env={SECRET_NAME}",
    "--set", "plugin.dr-core.fault=check_disk_space:fail:1@dr-demo-1",
    "--set", "plugin.dr-catalog.fault=migrate_job_templates:hang:1@dr-demo-2",
    "--set", "timeouts.upgrade.migrate_job_templates=3",
    "--set", "plugin.dr-database.fault=upgrade_db_schema:fail@dr-demo-3",
)
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")
UPGRADE_GREEN = (0x2E, 0x8B, 0x57)  # --upgrade in the page's style
VOID = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"})


@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    children: list[Node | str] = field(default_factory=list)

    @property
    def classes(self) -> list[str]:
        return self.attrs.get("class", "").split()

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def walk(self) -> Iterator[Node]:
        for child in self.children:
            if isinstance(child, Node):
                yield child
                yield from child.walk()

    def find(self, cls: str | None = None, **attrs: str) -> list[Node]:
        return [n for n in self.walk() if (cls is None or cls in n.classes)
                and all(n.attrs.get(k.replace("_", "-")) == v for k, v in attrs.items())]


class _Tree(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self._stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs})
        self._stack[-1].children.append(node)
        if tag not in VOID:
            self._stack.append(node)

    def handle_endtag(self, tag: str) -> None:
        while len(self._stack) > 1 and self._stack.pop().tag != tag:
            pass

    def handle_data(self, data: str) -> None:
        self._stack[-1].children.append(data)


def parse(document: str) -> Node:
    tree = _Tree()
    tree.feed(document)
    return tree.root


@dataclass(frozen=True)
class Report:
    run_dir: Path
    run_id: str
    state_dir: Path
    html: str
    dom: Node
    events: list[dict[str, Any]]
    state: dict[str, Any]

    def row(self, target: str) -> Node:
        (found,) = self.dom.find("row", data_target=target)
        return found

    def journal(self, event: str, target: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == event and e.get("target") == target]


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail("chromium not found on PATH: the report's rendering is tested in a real browser; install it "
                    "with apt-get install chromium (.ci/run does)")
    return found


def browse(url: str, profile: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *extra, url],
                          capture_output=True, text=True, timeout=90, stdin=subprocess.DEVNULL)


def drhost(state_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DRHOST_STATE_DIR": str(state_dir), "DRHOST_INSTANT_RETRIES": "1"}
    return subprocess.run([sys.executable, "-m", "drhost", *args], capture_output=True, text=True,
                          timeout=CLI_TIMEOUT_S, env=env, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Report]:
    base = tmp_path_factory.mktemp("html-report")
    state_dir = base / "state"
    state_dir.mkdir()
    try:
        run = drhost(state_dir, *RUN_ARGS)
        assert run.returncode == 5, run.stderr[-3000:]
        (run_dir,) = (state_dir / "runs").iterdir()
        made = drhost(state_dir, "report", run_dir.name)
        assert made.returncode == 0, made.stderr
        assert made.stdout.strip() == str(run_dir / "report.html")
        page = run_dir / "report.html"
        rendered = browse(page.as_uri(), base / "profile", "--dump-dom")
        assert rendered.returncode == 0 and "<html" in rendered.stdout, rendered.stderr[-2000:]
        from drhost.state import RunState, read_journal

        yield Report(run_dir, run_dir.name, state_dir, page.read_text(encoding="utf-8"), parse(rendered.stdout),
                     read_journal(run_dir / "events.jsonl"), RunState.open(run_dir).snapshot())
    finally:
        for pid in pids_under(state_dir):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_report_is_private_at_the_default_path(report: Report) -> None:
    """`drhost report RUN` writes RUN_DIR/report.html, readable by its owner only."""
    assert (report.run_dir / "report.html").stat().st_mode & 0o777 == 0o600


def test_report_loads_nothing_from_anywhere(report: Report) -> None:
    """The page references no external file: no src/href, no url() or @import, a CSP of default-src 'none'."""
    static = parse(report.html)
    assert not [n for n in static.walk() if "src" in n.attrs or "href" in n.attrs or n.tag in ("link", "img")]
    (style,) = [n for n in static.walk() if n.tag == "style"]
    assert "url(" not in style.text() and "@import" not in style.text()
    (policy,) = [n.attrs["content"] for n in static.walk() if n.attrs.get("http-equiv") == "Content-Security-Policy"]
    assert policy.startswith("default-src 'none';")


def test_script_draws_one_row_per_target_under_its_batch(report: Report) -> None:
    """The script renders a batch header per batch, each followed by the rows of that batch's targets."""
    (timeline,) = report.dom.find(id="timeline")
    order = [("batch", n.attrs["data-batch"]) if "batch-header" in n.classes else ("row", n.attrs["data-target"])
             for n in timeline.children if isinstance(n, Node) and "axis" not in n.classes]
    assert order == [("batch", "0"), ("row", "dr-demo-1"), ("batch", "1"), ("row", "dr-demo-2"),
                     ("batch", "2"), ("row", "dr-demo-3"), ("batch", "3"), ("row", "dr-demo-4")]
    assert report.dom.find(id="report")[0].find("row", data_target="dr-demo-1")


def test_step_bars_sit_in_stage_bars_with_their_titles(report: Report) -> None:
    """Every step attempt is a bar inside its stage's bar, titled with step, plugin, attempt, duration, outcome."""
    row = report.row("dr-demo-3")
    bars = row.find("step")
    assert len(bars) == len(report.journal("step.started", "dr-demo-3"))
    assert sum(len(stage.find("step")) for stage in row.find("stage")) == len(bars)
    for stage in row.find("stage"):
        assert all(b.attrs["title"].split("\n")[1].startswith(f"stage {stage.attrs['data-stage']},")
                   for b in stage.find("step"))
    (failed,) = [b for b in bars if b.attrs["data-step"] == "upgrade_db_schema"]
    title = failed.attrs["title"]
    assert title.startswith("upgrade_db_schema (dr-database)\nstage upgrade, attempt 1/")
    assert "\nduration " in title and "outcome: failed" in title and "injected fault" in title


def test_timeout_has_a_marker_and_its_report(report: Report) -> None:
    """A watchdog.timeout gives a timeout marker on the target's row and its message in the target's details."""
    (timeout,) = report.journal("watchdog.timeout", "dr-demo-2")
    markers = report.row("dr-demo-2").find("marker", data_kind="timeout")
    assert [m.attrs["title"] for m in markers] == ["timeout: [upgrade] migrate_job_templates (dr-catalog), attempt 1"]
    (details,) = report.dom.find("target-details", data_target="dr-demo-2")
    assert [p.text() for p in details.find("timeout-report")] == [timeout["message"]]
    assert not report.row("dr-demo-1").find("marker", data_kind="timeout")


def test_retry_has_a_marker_and_a_second_attempt_bar(report: Report) -> None:
    """A step retried shows a retry marker and a bar per attempt, the first failed."""
    row = report.row("dr-demo-1")
    attempts = [(b.attrs["data-attempt"], b.attrs["data-outcome"]) for b in row.find("step")
                if b.attrs["data-step"] == "check_disk_space"]
    assert attempts == [("1", "failed"), ("2", "completed")]
    assert [m.attrs["title"] for m in row.find("marker", data_kind="retry")] == [
        "retry: attempt 2/4 of [precheck] check_disk_space (dr-core)"]


def test_rollback_is_a_bar_with_a_part_per_stage(report: Report) -> None:
    """The rolled-back target has one rollback bar whose parts are the stages undone, in order; others have none."""
    undone = [e["stage"] for e in report.journal("rollback.stage", "dr-demo-3")]
    (bar,) = report.row("dr-demo-3").find("rollback")
    assert [p.attrs["data-stage"] for p in bar.find("rb-part")] == undone and undone
    assert bar.attrs["title"].startswith("rollback (verified): stages ")
    assert not report.row("dr-demo-1").find("rollback") and not report.row("dr-demo-2").find("rollback")


def test_budget_stop_shows_reason_and_not_started_row(report: Report) -> None:
    """A rollout stopped by its budget shows why, and the targets it never started as empty rows."""
    row = report.row("dr-demo-4")
    assert "not-started" in row.classes and not row.find("bar")
    assert row.find("empty")[0].text() == "not started: rollout stopped"
    (notice,) = report.dom.find("stop-reason")
    reason = report.state["rollout"]["stopped"]["reason"]
    assert notice.text() == f"rollout stopped in batch 3: {reason}not started: dr-demo-4"


def test_summary_states_run_facts_and_next_commands(report: Report) -> None:
    """The summary gives the run id, exit meaning, package, target counts and the next commands."""
    (summary,) = report.dom.find(id="summary")
    assert report.run_id in summary.text()
    assert summary.find("exit")[0].text().startswith("5 ABORTED: ")
    assert summary.find("counts")[0].text() == "1 pending, 1 rolled back, 2 succeeded"
    assert f"drhost resume {report.run_id}" in report.dom.find("next")[0].text()


def test_hostile_text_is_text_not_markup(report: Report) -> None:
    """A group name with markup in it appears as text in the rendered page and creates no element."""
    assert not [n for n in report.dom.walk() if n.tag == "b"]
    header = report.dom.find("batch-header", data_batch="0")[0]
    assert f"group {HOSTILE}" in header.text()
    assert "<b>" not in report.html and "\\u003cb\\u003e" in report.html


def test_no_config_values_beyond_names_hosts_groups_and_rollout(report: Report) -> None:
    """Settings such as password_env names and fault specs stay out of the report."""
    assert report.state["config"]["targets"]["dr-demo-2"]["password_env"] == SECRET_NAME
    assert SECRET_NAME not in report.html
    assert "migrate_job_templates:hang" not in report.html


def test_screenshot_shows_the_drawn_bars(report: Report, tmp_path: Path) -> None:
    """A screenshot of the report is not blank: it has many colours and the upgrade stage's green."""
    shot = tmp_path / "report.png"
    done = browse((report.run_dir / "report.html").as_uri(), tmp_path / "profile", "--window-size=1200,1100",
                  f"--screenshot={shot}")
    assert done.returncode == 0, done.stderr[-2000:]
    width, height, rows = png_rows(shot.read_bytes())
    assert (width, height) == (1200, 1100)
    pixels = [tuple(r[i:i + 3]) for r in rows for i in range(0, len(r), len(r) // width)]
    assert len(set(pixels)) > 50
    assert sum(all(abs(a - b) <= 2 for a, b in zip(p, UPGRADE_GREEN, strict=True)) for p in pixels) > 500


def test_out_writes_where_asked_and_unknown_run_is_an_error(report: Report, tmp_path: Path) -> None:
    """--out FILE writes the report there (0600, path printed); an unknown run is refused in the usual style."""
    out = tmp_path / "elsewhere.html"
    done = drhost(report.state_dir, "report", report.run_id, "--out", str(out))
    assert done.returncode == 0 and done.stdout.strip() == str(out)
    assert out.stat().st_mode & 0o777 == 0o600 and 'id="run-data"' in out.read_text(encoding="utf-8")
    missing = drhost(report.state_dir, "report", "20000101-000000-000000")
    assert missing.returncode == 7
    assert missing.stderr.startswith("drhost: error: no run '20000101-000000-000000'")


def test_report_in_chinese_draws_its_words_in_chinese_and_keeps_the_data(report: Report, tmp_path: Path) -> None:
    """With LANG=zh_CN the page is lang zh-CN and its headings, facts, batch headers and bar titles are Chinese,
    drawn by the same script (one CSP hash); names, statuses' keys and run ids stay as they are."""
    out = tmp_path / "zh.html"
    done = subprocess.run([sys.executable, "-m", "drhost", "report", report.run_id, "--out", str(out)],
                          capture_output=True, text=True, timeout=CLI_TIMEOUT_S, stdin=subprocess.DEVNULL,
                          env={**os.environ, "DRHOST_STATE_DIR": str(report.state_dir), "LANG": "zh_CN.UTF-8",
                               "LC_ALL": "", "LC_MESSAGES": ""})
    assert done.returncode == 0, done.stderr
    page = out.read_text(encoding="utf-8")
    assert '<html lang="zh-CN">' in page

    def policy(html: str) -> str:
        (found,) = [n.attrs["content"] for n in parse(html).walk()
                    if n.attrs.get("http-equiv") == "Content-Security-Policy"]
        return found

    assert policy(page) == policy(report.html), "the script is the same in every language"
    rendered = browse(out.as_uri(), tmp_path / "profile", "--dump-dom")
    assert rendered.returncode == 0, rendered.stderr[-2000:]
    dom = parse(rendered.stdout)
    headings = [n.text() for n in dom.walk() if n.tag == "h2"]
    assert headings == ["分批发布", "下一步", "时间线", "目标"], headings
    (first,) = dom.find("batch-header", data_batch="0")
    assert first.text().startswith("批次 1/4"), first.text()
    row = dom.find("row", data_target="dr-demo-3")[0]
    (failed,) = [b for b in row.find("step") if b.attrs["data-step"] == "upgrade_db_schema"]
    assert failed.attrs["title"].startswith("upgrade_db_schema (dr-database)\n阶段 升级, 第 1/"), failed.attrs["title"]
    assert "结果: " in failed.attrs["title"]


def png_rows(data: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and unfiltered pixel rows of an 8-bit RGB or RGBA PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    position, idat, header = 8, b"", b""
    while position < len(data):
        (length,) = struct.unpack(">I", data[position:position + 4])
        kind, body = data[position + 4:position + 8], data[position + 8:position + 8 + length]
        header = body if kind == b"IHDR" else header
        idat += body if kind == b"IDAT" else b""
        position += 12 + length
    width, height, depth, colour = struct.unpack(">IIBB", header[:10])
    assert depth == 8 and colour in (2, 6)
    bpp = 3 if colour == 2 else 4
    raw, stride, rows, previous = zlib.decompress(idat), width * bpp, [], bytes(width * bpp)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            left = line[i - bpp] if i >= bpp else 0
            up, corner = previous[i], previous[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                guess = left + up - corner
                best = min((abs(guess - left), 0, left), (abs(guess - up), 1, up), (abs(guess - corner), 2, corner))
                line[i] = (line[i] + best[2]) & 0xFF
        rows.append(bytes(line))
        previous = bytes(line)
    return width, height, rows
