"""``python -m soundception`` and ``torchrun -m soundception train ...``."""

from soundception.cli import main

if __name__ == "__main__":
    main()
