"""One-off (2026-12-01): re-key the committed results when the numerics version stopped hashing the compiled
kernels.

Until this change ``q4core.runs.numerics_version`` hashed the Python engine *and* the Cython / C kernel sources,
so a faster but bit-identical kernel invalidated every committed run.  Now the kernels are the
``implementation_version`` (recorded in each entry as provenance, not in its key; see ``q4core/runs.py``).  The
committed runs keep their numbers; only their identity's ``numerics`` field (and, for block-scaled recipes, the
``sources`` entries of ``_bsencode.pyx`` / ``_bsgemm.pyx``) change, and with it the key and the file name.

The script refuses to run unless the package sources, hashed the *old* way, still give the numerics version the
runs were computed with: then the code that made them is byte for byte the code here, and the re-keyed entries
(stamped with today's ``implementation_version``) are true.  That holds only at the commit that made the change,
so run it there, once:  ``python results/rekey_numerics_scope.py results/default``.
"""
import json
import sys
from pathlib import Path

from q4core import runs

OLD_SOURCES = ("formats.py", "quant.py", "gemm.py", "scaling.py", "train.py", "tasks.py", "data.py",
               "_quant.pyx", "_gemm.pyx", "src/*.h", "src/*.c", "nn/*.py", "recipe/*.py")
DROPPED_CONDITIONAL = ("_bsencode.pyx", "_bsgemm.pyx")


def rekey(folder):
    old = runs.sources_hash(runs._PACKAGE, OLD_SOURCES)
    new, impl = runs.numerics_version(), runs.implementation_version()
    moved = kept = 0
    for path in sorted(Path(folder).glob("*.json")):
        entry = json.loads(path.read_text())
        result, why = runs.RunCache.read_entry(path, path.stem)
        if result is None:
            raise SystemExit(f"{path}: {why}; nothing re-keyed after it")
        if entry["identity"]["numerics"] != old:
            kept += entry["identity"]["numerics"] == new
            if entry["identity"]["numerics"] != new:
                raise SystemExit(f"{path}: numerics {entry['identity']['numerics'][:12]} is neither the code's "
                                 f"old-scope version {old[:12]} nor the new {new[:12]}")
            continue
        ident = dict(entry["identity"], numerics=new)
        if "sources" in ident:
            ident["sources"] = {k: v for k, v in ident["sources"].items() if k not in DROPPED_CONDITIONAL}
        key = runs._sha256_text(runs._canonical(ident))
        entry.update(identity=ident, key=key, implementation=impl)
        text = json.dumps(runs._plain(entry), sort_keys=True, indent=1, allow_nan=True)
        target = path.with_name(f"{key}.json")
        target.write_text(text)
        assert runs.RunCache.read_entry(target, key)[0] is not None
        path.unlink()
        moved += 1
    print(f"{folder}: {moved} entries re-keyed from numerics {old[:12]} to {new[:12]} (implementation "
          f"{impl[:12]}), {kept} already current")


if __name__ == "__main__":
    for folder in sys.argv[1:] or ["results/default"]:
        rekey(folder)
