"""Write gainderive/registry_cache.json: the registry's moment integrands, precompiled (see gainderive/_cache.py).

Run after changing the registry, the parser, the program compiler, the integrand description or the
feature-point detection (gainderive/features.py), the closed-form verification or evaluation (gainderive/verify.py,
gainderive/closed_form.py: each form's decided q-ranges are stored):
    GAINDERIVE_BUDGET_CLOSED_FORM_SECONDS=60 python tools/make_registry_cache.py
(a generous symbolic time budget, so that a slow machine derives the same forms as a fast one).
tests/test_cache.py fails until the file matches what the code builds.
"""

import json
import os
import tempfile

from gainderive._cache import CACHE_FILE, build


def main() -> None:
    text = json.dumps(build(), indent=1, sort_keys=True) + "\n"
    # atomic: a reader never sees a half-written cache
    fd, tmp = tempfile.mkstemp(dir=CACHE_FILE.parent, prefix=".registry_cache.", suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, CACHE_FILE)
    print(f"wrote {CACHE_FILE} ({len(text):,} bytes)")


if __name__ == "__main__":
    main()
