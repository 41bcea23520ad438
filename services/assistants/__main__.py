"""`python -m services.assistants`: the assistants run engine alone."""

from services.assistants.app import build_app
from services.runtime.server import run


def main() -> None:
    run("assistants", build_app)


if __name__ == "__main__":
    main()
