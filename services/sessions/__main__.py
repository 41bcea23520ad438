"""`python -m services.sessions`: the sessions service alone."""

from services.runtime.server import run
from services.sessions.app import build_app


def main() -> None:
    run("sessions", build_app)


if __name__ == "__main__":
    main()
