"""Real-browser test harness: the dashboard served the way the README serves it, driven by
Debian's Chromium through Playwright.

- `AppServer` starts `streamlit run dashboard.py` with the README's flags (plus a random free
  port and `--server.fileWatcherType none`), waits for `/_stcore/health` to say ok, and stops
  the process group it started. Its log is kept under the test's tmp dir and checked for
  tracebacks (failures the page never shows).
- `browser`: one Chromium for the whole run, launched from `shutil.which("chromium")` with the
  launch args from shared/DESIGN.md. Playwright's `launch()` gives every launch a fresh
  temporary profile (`--user-data-dir` in the system tmp dir) and every `new_context()` is a
  clean, cookie-less browser session.
- `open_session(server)`: a new browser session (context + page, viewport 1400x1000) whose
  console errors, page errors and Streamlit error boxes fail the test.

Everything talks to the UI the way a user does (roles, labels, visible text) plus the
Vega-Lite chart's SVG marks, whose `aria-label` lists each cell's fields.
"""
from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

try:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
except ImportError:  # the `browser` fixture fails with a clear message
    PlaywrightTimeout = TimeoutError
import pytest

REPO = Path(__file__).resolve().parents[2]
# README screenshots are refreshed by every browser run; point elsewhere to keep docs/ untouched
SCREENSHOTS = Path(os.environ.get("PATCHCORE_SCREENSHOT_DIR") or REPO / "docs" / "screenshots")

CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
VIEWPORT = {"width": 1400, "height": 1000}

# Generous, finite waits (2 shared CPU cores; a 480-patch sweep takes ~20-60 s alone and
# several times that when other work shares the CPU).
SERVER_START_S = float(os.environ.get("PATCHCORE_BROWSER_SERVER_START_S", "120"))
SWEEP_S = float(os.environ.get("PATCHCORE_BROWSER_SWEEP_S", "900"))
UI_S = float(os.environ.get("PATCHCORE_BROWSER_UI_S", "60"))

EXCEPTION_BOX = '[data-testid="stException"]'
ERROR_BOX = '[data-testid="stAlertContentError"]'
CHART = '[data-testid="stVegaLiteChart"]'
# heatmap cells: SVG marks whose aria-label names the layer (text marks carry the same label,
# so restrict to the rect marks' paths, which are the clickable ones)
CELL = f'{CHART} svg g.mark-rect path[aria-label*="layer"]'


# --------------------------------------------------------------------------- server
def _free_port(address: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return s.getsockname()[1]


def non_loopback_address() -> str | None:
    """An IPv4 address of this machine that other machines could reach (not 127.x), or None."""
    found = []
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))  # UDP: nothing is sent; picks the interface of the route out
        found.append(s.getsockname()[0])
    with contextlib.suppress(OSError):
        found += socket.gethostbyname_ex(socket.gethostname())[2]
    for address in found:
        if address.startswith("127.") or address == "0.0.0.0":
            continue
        with contextlib.suppress(OSError), socket.socket() as s:
            s.bind((address, 0))  # really this machine's
            return address
    return None


def _streamlit_exe() -> str:
    here = Path(sys.executable).with_name("streamlit")  # the venv's, like `make run`
    if here.exists():
        return str(here)
    venv = REPO / ".venv" / "bin" / "streamlit"
    if venv.exists():
        return str(venv)
    found = shutil.which("streamlit")
    if not found:
        pytest.fail("streamlit is not installed in this environment: run `make setup`")
    return found


class AppServer:
    """`streamlit run dashboard.py`, as `make run` starts it, on a random free port."""

    def __init__(self, log_dir: Path, name: str = "app", env: dict | None = None,
                 address: str = "127.0.0.1"):
        self.log_dir = Path(log_dir)
        self.name = name
        self.address = address  # --server.address; another than 127.0.0.1 serves other machines
        self.extra_env = dict(env or {})
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None
        self.starts = 0
        self.log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}"

    def command(self) -> list[str]:
        return [_streamlit_exe(), "run", "dashboard.py",
                "--server.headless", "true", "--server.address", self.address,
                "--server.port", str(self.port), "--server.fileWatcherType", "none"]

    def start(self, timeout: float = SERVER_START_S) -> "AppServer":
        if not (REPO / "dashboard.py").exists():
            pytest.fail(f"{REPO / 'dashboard.py'} does not exist: nothing to serve")
        self.port = _free_port(self.address)
        self.starts += 1
        self.log_path = self.log_dir / f"{self.name}-{self.starts}.log"
        # the server imports this checkout's patchcore and pages, whatever is installed
        path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": path, **self.extra_env}
        log = open(self.log_path, "w")
        self.proc = subprocess.Popen(self.command(), cwd=REPO, env=env, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"streamlit exited with status {self.proc.returncode} before it was "
                            f"healthy:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=2) as r:
                    if r.read().decode().strip() == "ok":
                        return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"/_stcore/health did not say ok within {timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(0.3)

    def stop(self) -> None:
        """Stop the process group this harness started (SIGTERM, then SIGKILL)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        except ProcessLookupError:
            pass

    def restart(self) -> "AppServer":
        self.stop()
        return self.start()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])

    def tracebacks(self, all_starts: bool = False) -> list[str]:
        """Tracebacks the server logged (exceptions a page may never show); by default those of
        the current process, with all_starts=True also those of earlier starts."""
        paths = sorted(self.log_dir.glob(f"{self.name}-*.log")) if all_starts else [self.log_path]
        text = "\n".join(p.read_text(errors="replace") for p in paths if p and p.exists())
        return [m.group(0) for m in re.finditer(
            r"Traceback \(most recent call last\):.*?(?=\n\S|\Z)(?:\n\S[^\n]*)?", text, flags=re.S)]


# --------------------------------------------------------------------------- browser
class Session:
    """One browser session (its own context, so its own Streamlit session) on one server."""

    def __init__(self, browser, server: AppServer, downloads: Path):
        self.server = server
        self.context = browser.new_context(viewport=VIEWPORT, accept_downloads=True,
                                           device_scale_factor=1)
        self.context.set_default_timeout(UI_S * 1000)
        self.page = self.context.new_page()
        self.downloads = downloads
        self.console_errors: list[str] = []
        self.external_requests: list[str] = []
        self.page.on("console", self._on_console)
        self.page.on("pageerror", lambda exc: self.console_errors.append(f"page error: {exc}"))
        self.page.on("request", self._on_request)
        self.closed = False

    def _on_console(self, msg) -> None:
        where = str((msg.location or {}).get("url", ""))
        if msg.type != "error" or self._known_streamlit_noise(msg.text, where):
            return
        if where and not self._is_local(where):
            return  # a failed fetch from elsewhere: recorded in external_requests
        self.console_errors.append(f"console.error: {msg.text}" + (f" ({where})" if where else ""))

    def _known_streamlit_noise(self, text: str, url: str) -> bool:
        """Streamlit's frontend, opened on a page's URL (a deep link such as /Patching?...), first
        probes <page>/_stcore/health and <page>/_stcore/host-config, gets 404, then uses the root
        (streamlit/streamlit#7074, open). Only those two 404s are ignored."""
        path = urllib.parse.urlsplit(url).path if url.startswith(self.server.url) else ""
        return "404" in text and re.fullmatch(r"/[^/]+/_stcore/(health|host-config)", path) is not None

    def _is_local(self, url: str) -> bool:
        return url.startswith((self.server.url + "/", "data:", "blob:", "about:")) or url == self.server.url

    def _on_request(self, request) -> None:
        # The dashboard must work offline and tell no one else what its users do: every request
        # must go to its own server. Recorded whether or not the fetch succeeds, so it fails the
        # same with or without a network (test_pages.py checks it on every page).
        if not self._is_local(request.url):
            self.external_requests.append(request.url)

    # navigation ------------------------------------------------------------
    def goto(self, path_and_query: str = "/") -> "Session":
        url = path_and_query if path_and_query.startswith("http") else self.server.url + path_and_query
        self.page.goto(url)
        self.page.locator('[data-testid="stApp"]').wait_for()
        self.settle()
        return self

    def settle(self, timeout: float = UI_S) -> None:
        """Wait until the script run (if any) has finished."""
        self.page.locator('[data-testid="stApp"][data-test-script-state="notRunning"]').wait_for(
            timeout=timeout * 1000)
        self.page.wait_for_timeout(300)
        self.page.locator('[data-testid="stApp"][data-test-script-state="notRunning"]').wait_for(
            timeout=timeout * 1000)

    def nav_link(self, title_pattern: str):
        """The sidebar's link to a page, by its label (the app draws the page list: ui/page.py)."""
        label = self.page.locator('[data-testid="stMarkdownContainer"]', has_text=re.compile(title_pattern, re.I))
        return self.sidebar.locator('a[data-testid="stPageLink-NavLink"]').filter(has=label).first

    def open_page(self, title_pattern: str) -> None:
        """Switch pages through the sidebar link, as a user does (keeps the session)."""
        link = self.nav_link(title_pattern)
        href = urllib.parse.urljoin(self.page.url, link.get_attribute("href") or "")
        target = urllib.parse.urlsplit(href).path
        link.click()
        self.page.wait_for_load_state()
        # the new page's script may not have started yet: wait for its address, then its run
        self.page.wait_for_function("p => window.location.pathname === p", arg=target or "/",
                                    timeout=UI_S * 1000)
        self.settle()

    @property
    def main(self):
        return self.page.locator('[data-testid="stMain"]')

    @property
    def sidebar(self):
        return self.page.locator('[data-testid="stSidebar"]')

    def button(self, name: str):
        """A button by its exact visible label (icons are not part of the accessible name)."""
        return self.main.get_by_role("button", name=name, exact=True)

    def choose(self, label: str, option: str) -> None:
        """Pick `option` in the select box labelled `label`."""
        self.main.get_by_role("combobox", name=label).click()
        self.page.get_by_role("option", name=option, exact=True).click()
        self.settle()

    def pick(self, option: str) -> None:
        """Click a radio option by its label."""
        self.main.get_by_role("radio", name=option, exact=True).check(force=True)
        self.settle()

    def path_and_query(self) -> str:
        """The address bar without scheme/host: what a user shares with someone else."""
        u = urllib.parse.urlsplit(self.page.url)
        return u.path + (f"?{u.query}" if u.query else "")

    # chart -----------------------------------------------------------------
    def cells(self, scope=None):
        return (scope or self.page).locator(CELL)

    def cell_records(self, scope=None) -> list[dict]:
        """Every heatmap cell as a dict parsed from its SVG aria-label."""
        labels = self.cells(scope).evaluate_all("els => els.map(e => e.getAttribute('aria-label'))")
        return [parse_cell_label(a) for a in labels]

    def wait_for_heatmap(self, timeout: float = SWEEP_S, min_cells: int = 1):
        cells = self.cells()
        try:
            cells.first.wait_for(timeout=timeout * 1000)
        except PlaywrightTimeout:
            pytest.fail(f"no heatmap within {timeout:.0f} s. The page says:\n"
                        f"{self.main.inner_text()[-1500:]}\n--- problems: {self.error_boxes()} "
                        f"{self.console_errors}\n--- server log:\n{self.server.log_tail(30)}",
                        pytrace=False)
        self.settle(timeout)
        n = cells.count()
        assert n >= min_cells, f"heatmap has {n} cells, expected at least {min_cells}"
        return cells

    # checks ----------------------------------------------------------------
    def error_boxes(self) -> list[str]:
        out = []
        for sel in (EXCEPTION_BOX, ERROR_BOX):
            loc = self.page.locator(sel)
            for i in range(loc.count()):
                out.append(f"{sel}: {loc.nth(i).inner_text()[:800]}")
        return out

    def assert_clean(self, where: str = "") -> None:
        """No exception box, no error alert, no console/page error so far."""
        problems = self.error_boxes() + list(self.console_errors)
        assert not problems, f"hidden failures {where}:\n" + "\n".join(problems)

    def download(self, button_name) -> Path:
        """Click a download button (by its visible label) and return the saved file."""
        btn = self.main.get_by_role("button", name=button_name, exact=True).first
        with self.page.expect_download(timeout=UI_S * 1000) as dl:
            btn.click()
        d = dl.value
        target = self.downloads / f"{int(time.time() * 1000)}-{d.suggested_filename}"
        d.save_as(target)
        return target

    def screenshot(self, name: str, full_page: bool = True) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        # Streamlit scrolls inside its own container, so Playwright's full_page sees one viewport:
        # grow the viewport to the content's height (capped) for the shot, then restore it.
        height = VIEWPORT["height"]
        if full_page:
            content = self.page.evaluate(
                """() => Math.max(...['[data-testid="stMain"]', '[data-testid="stAppViewContainer"]',
                                      '[data-testid="stMainBlockContainer"]']
                    .map(s => document.querySelector(s)).filter(Boolean).map(e => e.scrollHeight))""")
            height = int(min(max(VIEWPORT["height"], content + 40), 3000))
        self.page.set_viewport_size({"width": VIEWPORT["width"], "height": height})
        # from the top of the page (a download or a click may have scrolled it down)
        self.page.evaluate("""() => { window.scrollTo(0, 0);
            for (const s of ['[data-testid="stMain"]', '[data-testid="stAppViewContainer"]'])
                document.querySelector(s)?.scrollTo(0, 0); }""")
        try:
            self.page.wait_for_timeout(800)  # relayout, and let Vega finish drawing
            self.page.screenshot(path=str(path), animations="disabled")
        finally:
            self.page.set_viewport_size(VIEWPORT)
        return path

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.context.close()


_NUM = r"([-\u2212]?(?:\d+(?:\.\d*)?|\.\d+)(?:e[-+]?\d+)?|NaN)"


def _num(text: str) -> float:
    return float(text.replace("\u2212", "-"))


def parse_cell_label(label: str) -> dict:
    """'layer: 3; position: 5; token:  Mary; logit difference (raw): 1.234; normalised score: 0.5' -> dict.

    Vega writes the tooltip fields into each mark's aria-label (d3 format, Unicode minus)."""
    out: dict = {"label": label}
    for key in ("layer", "position", "head"):
        m = re.search(rf"(?:^|; ){key}: (\d+)", label)
        if m:
            out[key] = int(m.group(1))
    m = re.search(r"\(raw\): " + _NUM, label)
    if m:
        out["value"] = _num(m.group(1))
    m = re.search(r"normalised(?: score)?: " + _NUM, label)
    if m:
        out["normalized"] = _num(m.group(1))
    m = re.search(r"token: (.*?); [^;]*\(raw\):", label)
    if m:
        out["token"] = m.group(1)
    return out


# Same experiment, same numbers - up to float32 rounding: patchcore groups a sweep's forwards by a
# cost model fitted to timed runs, so two runs of one sweep may add in a different order
# (measured differences ~1e-6 in the raw logit difference). A run that mixed up two sessions'
# activations, prompts or settings would be off by O(1).
NUM_TOL = 1e-4


def assert_same_table(got: pd.DataFrame, want: pd.DataFrame, tol: float = NUM_TOL) -> float:
    """Two downloaded sweep tables hold the same cells and numbers; returns the largest difference."""
    assert list(got.columns) == list(want.columns)
    assert len(got) == len(want)
    for col in got.columns:
        if col not in ("value", "normalized"):
            assert got[col].tolist() == want[col].tolist(), f"column {col!r} differs"
    diff = float(max((got[c] - want[c]).abs().max() for c in ("value", "normalized")))
    assert diff <= tol, f"numbers differ by up to {diff:.3g} (allowed: float rounding, {tol:g})"
    return diff


def assert_same_cells(got: list[dict], want: list[dict], tol: float = 1e-3 + 1e-9) -> None:
    """Two heatmaps show the same cells (keys, tokens) and numbers (drawn with 3 decimals: a
    rounding-level difference may move the last digit by one)."""
    def key(c):
        return tuple(c.get(k) for k in ("layer", "position", "head"))
    g, w = {key(c): c for c in got}, {key(c): c for c in want}
    assert len(g) == len(got) and g.keys() == w.keys(), "the heatmaps have different cells"
    for k, c in g.items():
        assert c.get("token") == w[k].get("token"), (c, w[k])
        for f in ("value", "normalized"):
            assert abs(c[f] - w[k][f]) <= tol, (f, c, w[k])


def read_csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(io.StringIO(Path(path).read_text()))


# --------------------------------------------------------------------------- shared runs
# Sweeps are the slow part (minutes on a busy 2-core CPU), so each experiment runs once per test
# session and several tests read it. Each fixture is a user's browser session on the main server.

CAPITAL = "Country → capital"            # Prompts page preset: 8 tokens, half the demo's cost
NOISE = "Noise (corrupted → clean)"      # Patching page direction
SHARED_CELL = (5, 3)                     # layer 5 at ' France' (the token where the prompts differ)
DATASET_PAIRS = 50                       # issue 5: "runs a 50-pair IOI dataset"
BOTH = "Both (denoise + noise, with the quadrant view)"
QUADRANTS = "Quadrants: needed, enough, both or neither"
DATASET_S = float(os.environ.get("PATCHCORE_BROWSER_DATASET_S", "3600"))


@dataclass
class Run:
    session: Session
    seconds: float
    link: str = ""
    csv: pd.DataFrame | None = field(default=None, repr=False)
    cells: list = field(default_factory=list, repr=False)
    detail: dict = field(default_factory=dict)


def detail_box(s: Session):
    """The bordered box that opens when a heatmap cell is clicked."""
    return s.main.locator('[data-testid="stVerticalBlock"]').filter(
        has=s.page.get_by_text(re.compile(r"^Selected cell"))).last


def table_rows(locator) -> list[list[str]]:
    """Rows of an st.dataframe (drawn on a canvas; its cells are mirrored in a hidden table)."""
    return locator.evaluate(
        "e => [...e.querySelectorAll('tr')].map(r => [...r.children].map(c => c.textContent))")


def cell_detail(s: Session) -> dict:
    """What the cell-detail box says: its text, and its named values as {label: value}, read
    from its metrics (label above a big number) and/or its table, whichever the page uses."""
    box = detail_box(s)
    box.wait_for()
    deadline = time.monotonic() + UI_S
    while True:
        fields = {}
        metrics = box.locator('[data-testid="stMetric"]')
        for i in range(metrics.count()):
            m = metrics.nth(i)
            fields[m.locator('[data-testid="stMetricLabel"]').inner_text().strip()] = \
                m.locator('[data-testid="stMetricValue"]').inner_text().strip()
        grids = box.locator('[data-testid="stDataFrame"]')
        for i in range(grids.count()):  # the grid fills its hidden table after it has drawn
            fields.update({r[0]: r[1] for r in table_rows(grids.nth(i))[1:] if len(r) == 2})
        if fields or time.monotonic() > deadline:
            return {"text": box.inner_text(), "fields": fields}
        s.page.wait_for_timeout(200)


def click_cell(s: Session, **where) -> dict:
    """Click the heatmap cell with these fields (e.g. layer=5, position=3); returns its record."""
    records = s.cell_records()
    idx = [i for i, r in enumerate(records) if all(r.get(k) == v for k, v in where.items())]
    assert len(idx) == 1, f"expected one cell with {where}, found {len(idx)}"
    # click the middle of the cell as a user does (the number drawn there takes the click; Vega
    # passes it to the cell), with the chart scrolled clear of Streamlit's sticky header
    cell = s.cells().nth(idx[0])
    cell.evaluate("e => e.scrollIntoView({block: 'center', inline: 'center'})")
    box = cell.bounding_box()
    assert box and box["width"] > 2 and box["height"] > 2, f"cell {where} is not drawn: {box}"
    s.page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    s.page.get_by_text(re.compile(r"^Selected cell")).first.wait_for()
    s.settle()
    return records[idx[0]]


def finish(s: Session) -> None:
    if s.closed:
        return
    problems = s.error_boxes() + s.console_errors
    s.close()
    if problems:
        pytest.fail("hidden failures in the browser:\n" + "\n".join(problems), pytrace=False)


# Order: the landing test first (it measures the cold run), the server restart last.
