"""``python -m medcloud_exchange``: the exchange under uvicorn, settings from the environment."""

from __future__ import annotations

import uvicorn

from medcloud_exchange.app import create_app
from medcloud_exchange.settings import ExchangeSettings


def main() -> None:
    settings = ExchangeSettings()
    # No access log: ITI-67 query strings carry patient identifiers.
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, access_log=False)


if __name__ == "__main__":
    main()
