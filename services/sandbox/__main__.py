"""`python -m services.sandbox`: the sandbox service alone."""

from services.runtime.server import run
from services.sandbox.app import build_app


def main() -> None:
    run("sandbox", build_app)


if __name__ == "__main__":
    main()
