"""python -m arnorm: which library is loaded, its version, and the default token budgets."""

import sys

from . import _lib


def main():
    try:
        path = _lib.library_path()
    except _lib.ArnormLibraryNotFound as e:
        print(e)
        return 1
    print("library  %s" % path)
    print("version  %d (binding built for %d)" % (_lib.version(), _lib.ARNORM_VERSION))
    print("default fused token budget (arnormDefaultMaxTokens), bf16:")
    print("  %-8s %6s %8s %8s %8s" % ("backend", "hidden", "TP2", "TP4", "TP8"))
    for backend in (_lib.Backend.Cpu, _lib.Backend.Cuda):
        for hidden in (2304, 4096, 8192):
            row = []
            for n in (2, 4, 8):
                try:
                    row.append(str(_lib.default_max_tokens(n, hidden, _lib.DataType.Bfloat16, backend)))
                except _lib.ArnormError as e:
                    row.append(e.result.name if e.result is not None else "error")
            print("  %-8s %6d %8s %8s %8s" % (backend.name.lower(), hidden, *row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
