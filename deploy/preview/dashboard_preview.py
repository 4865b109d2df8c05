"""Render a picture of the saic Grafana dashboard from real data, without Grafana.

Grafana is not packaged for Debian and cannot be installed on the project's build machines, so
this script draws the committed dashboard (deploy/grafana/dashboards/saic.json) itself: same
panels, same grid positions, same PromQL, evaluated by a real Prometheus (Debian's package)
scraping a real `saic serve` process under real HTTP + gRPC load on loopback.  It is a preview
of what Grafana shows, not a Grafana screenshot, and says so on the image.

    python deploy/preview/dashboard_preview.py --seconds 150 --out docs/dashboard-preview.png

Needs: the `prometheus` binary (scripts/setup/prometheus.sh), matplotlib, a model in models/,
and images (../shared/data if present, else generated ones).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy/grafana/dashboards/saic.json"
PROM_CONFIG = ROOT / "deploy/prometheus/prometheus.yml"
CONFIGMAP = ROOT / "deploy/k8s/base/configmap.yaml"
DATA = Path(os.environ.get("SAIC_DATA_DIR", ROOT / "../shared/data"))
SCRAPE_S = 2
RATE_INTERVAL = "20s"  # what Grafana's $__rate_interval becomes for a 2 s scrape at this zoom


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(url: str, data: bytes | None = None, ctype: str | None = None, timeout: float = 60) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    if ctype:
        req.add_header("Content-Type", ctype)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{proc.args[0]} exited with {proc.returncode}")
        try:
            if http(url, timeout=2)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"{url} not ready after {timeout} s")


def load_images() -> list[bytes]:
    """Real photos of several sizes (tiny10 64x64, BSDS/CBSD 481x321, a few Kodak 768x512)."""
    from PIL import Image

    rnd = random.Random(0)
    paths: list[Path] = []
    for pattern, n in (("tiny10/test/*/*", 60), ("photos/CBSD68_*.png", 12), ("kodak/*.png", 3)):
        found = sorted(DATA.glob(pattern))
        paths += rnd.sample(found, min(n, len(found)))
    out = []
    for p in paths:
        buf = io.BytesIO()
        Image.open(p).convert("RGB").save(buf, format="PNG")
        out.append(buf.getvalue())
    if not out:  # no shared data: generated gradients
        import numpy as np

        for i in range(20):
            y, x = np.mgrid[0:128, 0:128]
            img = np.stack([x * 2, y * 2, (x * y + i * 37) % 256], -1).astype("uint8")
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="PNG")
            out.append(buf.getvalue())
    return out


def run_load(http_url: str, grpc_target: str, seconds: float, workers: int) -> dict[str, int]:
    """Mixed traffic: HTTP and gRPC compress/decompress at random qualities, a few bad requests."""
    import grpc

    from saic.server.proto import codec_pb2 as pb, codec_pb2_grpc as pb_grpc

    images = load_images()
    streams: list[bytes] = []
    counts: dict[str, int] = {}
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def worker(seed: int) -> None:
        rnd = random.Random(seed)
        with grpc.insecure_channel(grpc_target) as ch:
            stub = pb_grpc.CodecStub(ch)
            while time.monotonic() < stop:
                img = rnd.choice(images)
                q = rnd.choice([10, 30, 50, 70, 90])
                r = rnd.random()
                try:
                    if r < 0.45:
                        code, body = http(f"{http_url}/v1/compress?quality={q}", img, "image/png")
                        if code == 200:
                            with lock:
                                streams.append(body)
                        kind = f"http compress {code}"
                    elif r < 0.65 and streams:
                        code, _ = http(f"{http_url}/v1/decompress", rnd.choice(streams), "application/octet-stream")
                        kind = f"http decompress {code}"
                    elif r < 0.85:
                        res = stub.Compress(pb.CompressRequest(image=img, quality=q), timeout=60)
                        stub.Decompress(pb.DecompressRequest(bitstream=res.bitstream), timeout=60)
                        kind = "grpc compress+decompress OK"
                    elif r < 0.95:
                        code, _ = http(f"{http_url}/v1/decompress", os.urandom(rnd.randint(10, 200)), "application/octet-stream")
                        kind = f"http bad-decompress {code}"
                    else:
                        code, _ = http(f"{http_url}/v1/models")
                        kind = f"http models {code}"
                except grpc.RpcError as exc:
                    kind = f"grpc {exc.code().name}"
                with lock:
                    counts[kind] = counts.get(kind, 0) + 1

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return counts


def query_range(prom: str, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
    expr = expr.replace("$__rate_interval", RATE_INTERVAL).replace("$job", ".*").replace("$instance", ".*")
    qs = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    code, body = http(f"{prom}/api/v1/query_range?{qs}")
    reply = json.loads(body)
    if reply.get("status") != "success":
        raise RuntimeError(f"{expr}: {reply.get('error')}")
    return reply["data"]["result"]


def legend(fmt: str, metric: dict[str, str]) -> str:
    out = fmt
    for k, v in metric.items():
        out = out.replace("{{" + k + "}}", v)
    return out.strip() or ",".join(f"{k}={v}" for k, v in metric.items())


def render(prom: str, start: float, end: float, out: Path, note: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    dash = json.loads(DASHBOARD.read_text())
    panels = dash["panels"]
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    unit_w, unit_h = 1.0, 0.42  # inches per grid unit
    fig = plt.figure(figsize=(24 * unit_w, rows * unit_h + 1.3), facecolor="#111217")
    top = 1.0 - 1.3 / (rows * unit_h + 1.3)
    fig.text(0.01, 1 - 0.35 / (rows * unit_h + 1.3), f"{dash['title']}  (dashboard preview)", color="white", fontsize=20, va="top")
    import textwrap

    fig.text(0.01, 1 - 0.75 / (rows * unit_h + 1.3), textwrap.fill(note, 230), color="#9fa7b3", fontsize=11, va="top")
    step = SCRAPE_S * 2
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]

    def box(g: dict[str, int]) -> list[float]:
        pad_x, pad_y, ticks = 0.004, 0.006, 0.03  # room for the y tick labels inside the panel
        x0 = g["x"] / 24 + pad_x + ticks
        w = g["w"] / 24 - 2 * pad_x - ticks
        y1 = top - g["y"] / rows * top
        h = g["h"] / rows * top
        return [x0, y1 - h + pad_y + 0.012, w, h - 2 * pad_y - 0.012]

    for p in panels:
        g = p["gridPos"]
        if p["type"] == "row":
            fig.text(g["x"] / 24 + 0.004, top - (g["y"] + 0.6) / rows * top, p["title"], color="white", fontsize=15, weight="bold")
            continue
        ax = fig.add_axes(box(g), facecolor="#181b1f")
        ax.set_title(p["title"], color="#d8d9da", fontsize=11, loc="left")
        for s in ax.spines.values():
            s.set_color("#2c3235")
        ax.tick_params(colors="#9fa7b3", labelsize=8)
        unit = p.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
        if p["type"] == "timeseries":
            stacked = p["fieldConfig"]["defaults"]["custom"]["stacking"]["mode"] == "normal"
            base = None
            i = 0
            for t in p["targets"]:
                for series in query_range(prom, t["expr"], start, end, step):
                    ts = np.array([float(v[0]) for v in series["values"]]) - start
                    ys = np.array([float(v[1]) for v in series["values"]])
                    if np.all(np.isnan(ys)):  # e.g. a quantile of a histogram with no observations
                        continue
                    label = legend(t.get("legendFormat", ""), series["metric"])
                    if stacked:
                        base = np.zeros_like(ys) if base is None or len(base) != len(ys) else base
                        ax.fill_between(ts, base, base + np.nan_to_num(ys), alpha=0.6, color=colors[i % 10], label=label)
                        base = base + np.nan_to_num(ys)
                    else:
                        ax.plot(ts, ys, lw=1.2, color=colors[i % 10], label=label)
                    i += 1
            if i:
                ax.legend(fontsize=7, loc="upper left", ncol=2 if i > 6 else 1, facecolor="#181b1f", labelcolor="#d8d9da",
                          framealpha=0.7, edgecolor="#2c3235")
            else:
                ax.text(0.5, 0.5, "No data", color="#9fa7b3", ha="center", va="center", transform=ax.transAxes)
            ax.set_xlim(0, end - start)
            ax.set_xlabel("seconds", color="#9fa7b3", fontsize=8)
            ax.set_ylabel({"s": "seconds", "reqps": "req/s", "Bps": "bytes/s", "percentunit": "ratio"}.get(unit, ""),
                          color="#9fa7b3", fontsize=8)
            ax.grid(color="#2c3235", lw=0.5)
        elif p["type"] == "heatmap":
            series = query_range(prom, p["targets"][0]["expr"], start, end, step)
            les = sorted(series, key=lambda s: float(s["metric"]["le"]))
            if les:
                cum = np.array([[float(v[1]) for v in s["values"]] for s in les])
                counts = np.diff(np.vstack([np.zeros(cum.shape[1]), cum]), axis=0)  # de-accumulate buckets
                ax.imshow(np.nan_to_num(counts), aspect="auto", origin="lower", cmap="Oranges", interpolation="nearest",
                          extent=(0, end - start, -0.5, len(les) - 0.5))
                ax.set_yticks(range(len(les)))
                ax.set_yticklabels([s["metric"]["le"] for s in les], fontsize=7)
                ax.set_ylabel("bucket (le)", color="#9fa7b3", fontsize=8)
                ax.set_xlabel("seconds", color="#9fa7b3", fontsize=8)
        elif p["type"] in ("table", "stat"):
            ax.set_xticks([])
            ax.set_yticks([])
            t = p["targets"][0]
            series = query_range(prom, t["expr"], end, end, step)
            if p["type"] == "stat":
                value = series[0]["values"][-1][1] if series else "-"
                ax.text(0.5, 0.45, value, color="white", fontsize=40, ha="center", va="center", transform=ax.transAxes)
                ax.set_facecolor("#1a7f37" if series and float(value) >= 1 else "#a4262c")
            else:
                keys = sorted({k for s in series for k in s["metric"]})
                cells = [[s["metric"].get(k, "") for k in keys] + [s["values"][-1][1]] for s in series]
                if cells:
                    tab = ax.table(cellText=cells, colLabels=keys + ["replicas"], loc="upper center", cellLoc="left")
                    tab.auto_set_font_size(False)
                    tab.set_fontsize(10)
                    for cell in tab.get_celld().values():
                        cell.set_facecolor("#181b1f")
                        cell.set_edgecolor("#2c3235")
                        cell.get_text().set_color("#d8d9da")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=72, facecolor=fig.get_facecolor())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=150, help="duration of the load")
    ap.add_argument("--workers", type=int, default=4, help="concurrent clients")
    ap.add_argument("--out", type=Path, default=ROOT / "docs/dashboard-preview.png")
    args = ap.parse_args(argv)
    prometheus = shutil.which("prometheus")
    if not prometheus:
        raise SystemExit("prometheus not found: bash scripts/setup/prometheus.sh")
    work = Path(tempfile.mkdtemp(prefix="saic-preview-"))
    hp, gp, pp = free_port(), free_port(), free_port()
    env = {**os.environ, **yaml.safe_load(CONFIGMAP.read_text())["data"], "SAIC_HOST": "127.0.0.1",
           "SAIC_HTTP_PORT": str(hp), "SAIC_GRPC_PORT": str(gp), "SAIC_MODEL_DIR": str(ROOT / "models")}
    procs: list[subprocess.Popen] = []
    try:
        with open(work / "server.log", "wb") as log:
            srv = subprocess.Popen([sys.executable, "-m", "saic.cli", "serve"], env=env, stdout=log, stderr=subprocess.STDOUT)
        procs.append(srv)
        wait_ready(f"http://127.0.0.1:{hp}/readyz", srv)
        cfg = yaml.safe_load(PROM_CONFIG.read_text())
        cfg["global"]["scrape_interval"] = f"{SCRAPE_S}s"
        cfg["rule_files"] = [str(PROM_CONFIG.parent / "rules/*.yml")]
        cfg["scrape_configs"] = [j for j in cfg["scrape_configs"] if j["job_name"] == "saic"]
        cfg["scrape_configs"][0]["static_configs"] = [{"targets": [f"127.0.0.1:{hp}"]}]
        (work / "prometheus.yml").write_text(yaml.safe_dump(cfg))
        with open(work / "prometheus.log", "wb") as log:
            prom = subprocess.Popen([prometheus, f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'tsdb'}",
                                     f"--web.listen-address=127.0.0.1:{pp}"], stdout=log, stderr=subprocess.STDOUT)
        procs.append(prom)
        prom_url = f"http://127.0.0.1:{pp}"
        wait_ready(prom_url + "/-/ready", prom)
        start = time.time()
        time.sleep(10)  # an idle stretch before the load, as on a real dashboard
        counts = run_load(f"http://127.0.0.1:{hp}", f"127.0.0.1:{gp}", args.seconds, args.workers)
        time.sleep(15)  # let the last scrapes land and the rates fall
        end = time.time()
        version = subprocess.run([prometheus, "--version"], capture_output=True, text=True).stdout.split("\n")[0]
        note = (f"Not Grafana (not installable here): deploy/preview/dashboard_preview.py drew the panels of "
                f"deploy/grafana/dashboards/saic.json from their own PromQL, evaluated by a real {version.split(' (')[0]} "
                f"scraping a real saic server under {args.workers} HTTP+gRPC clients for {args.seconds:.0f} s "
                f"({sum(counts.values())} requests) on a shared 2-core CPU machine.")
        render(prom_url, start, end, args.out, note)
        print(json.dumps(counts, indent=1, sort_keys=True))
        print(f"wrote {args.out}")
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(timeout=40)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
