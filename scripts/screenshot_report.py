"""Screenshot an HTML report in headless Chromium (Debian's `chromium` package) for the README.

    python scripts/screenshot_report.py report.html docs/img/eval-report.png [--width 1200 --height 1400]

With no arguments it first writes the demo report (bundled images, tiny CLIP) to
bench-out/eval-demo/report.html and screenshots that into docs/img/eval-report.png.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def demo_report(out: Path) -> Path:
    import os

    from hyperkit.eval import evaluate
    from hyperkit.eval.report import write_report

    os.chdir(ROOT)  # relative paths: the page shows no machine-specific folders
    fx = Path("fixtures/eval")
    result = evaluate(
        fx / "manifest.csv", str(fx / "tiny-clip.json"), str(fx / "tiny-clip.safetensors"), use_cache=False
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    write_report(result, out, force=True)
    return out


def screenshot(page: Path, png: Path, width: int, height: int) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        sys.exit("chromium not found: apt-get install -y chromium")
    with tempfile.TemporaryDirectory() as profile:
        cmd = [
            browser,
            "--headless",
            "--no-sandbox",  # root in a container has no user namespace for the sandbox
            "--disable-gpu",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
            f"--screenshot={png.resolve()}",
            page.resolve().as_uri(),
        ]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    print(f"wrote {png}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("page", nargs="?", type=Path)
    parser.add_argument("png", nargs="?", type=Path, default=ROOT / "docs" / "img" / "eval-report.png")
    parser.add_argument("--width", type=int, default=1200)
    parser.add_argument("--height", type=int, default=1400)
    args = parser.parse_args()
    page = args.page or demo_report(ROOT / "bench-out" / "eval-demo" / "report.html")
    screenshot(page, args.png, args.width, args.height)
    return 0


if __name__ == "__main__":
    sys.exit(main())
