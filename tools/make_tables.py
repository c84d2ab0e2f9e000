"""Write tables/: moments and gains of every registry activation against q (CSV and JSON per activation).

    python tools/make_tables.py

121 log-spaced q over [1e-3, 1e3], default parameters, method "auto" (verified closed forms where they
are at least as accurate, quadrature otherwise; the metadata says which).  tests/test_tables.py
regenerates the tables and compares them to these files to 1e-12 relative.
"""

import json
from pathlib import Path

from gainderive import REGISTRY, table
from gainderive.tables import write_atomic

GRID = "1e-3:1e3:121"
FOLDER = Path(__file__).resolve().parents[1] / "tables"


def main() -> None:
    FOLDER.mkdir(exist_ok=True)
    for name in REGISTRY:
        t = table(name, GRID)
        write_atomic(FOLDER / f"{name}.csv", t.to_csv())
        write_atomic(FOLDER / f"{name}.json", json.dumps(t.to_json(), indent=1) + "\n")
        print(f"{name:12s} {t.q.size} rows, methods: {t.methods}")


if __name__ == "__main__":
    main()
