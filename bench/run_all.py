"""`make bench`: every benchmark in turn; results print as JSON lines and append to bench/results/."""

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
quick = ["--quick"] if "--quick" in sys.argv else []
failed = []
for script in sorted(HERE.glob("bench_*.py")):
    print(f"== {script.name}", flush=True)
    if subprocess.run([sys.executable, str(script), *quick], cwd=HERE).returncode != 0:
        failed.append(script.name)
if failed:
    sys.exit(f"failed: {', '.join(failed)}")
