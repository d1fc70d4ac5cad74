"""The ``swa`` command of the wheel: the same Rust ``main`` as the standalone binary."""

import sys


def main() -> None:
    from . import _native, _environment

    _environment()
    sys.exit(_native.main(sys.argv))


if __name__ == "__main__":
    main()
