"""`python -m vpt ...` and `accelerate launch -m vpt ...` enter here."""

from vpt.cli import main

if __name__ == "__main__":
    main()
