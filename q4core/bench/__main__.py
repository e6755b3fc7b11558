"""Dispatch ``python -m q4core.bench NAME ...`` to ``q4core.bench.NAME.main``."""
import importlib
import sys

COMMANDS = {
    "quantize": "INT4 / radix-4 FP4 quantize+pack throughput against the numpy chain",
    "gemm": "INT4 and FP4 x INT4 GEMM GOP/s of every kernel path against numpy float32",
    "train": "time of one training step under fp32, q4 and simulated q4",
}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: python -m q4core.bench {%s} [options]\n" % ",".join(COMMANDS))
        for name, text in COMMANDS.items():
            print(f"  {name:9s} {text}")
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nerror: unknown benchmark {argv[0]!r}", file=sys.stderr)
            return 2
        return 0
    module = importlib.import_module(f"q4core.bench.{argv[0]}")
    return module.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
