"""`python -m services.llm`: the llm service alone."""

from services.llm.app import build_app
from services.runtime.server import run


def main() -> None:
    run("llm", build_app)


if __name__ == "__main__":
    main()
