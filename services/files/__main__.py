"""`python -m services.files`: the files service alone."""

from services.files.app import build_app
from services.runtime.server import run


def main() -> None:
    run("files", build_app)


if __name__ == "__main__":
    main()
