"""``python -m das_train recipe=NAME key=value ...``: parses and calls ``run(cfg)``."""

from das_train.cli import main

if __name__ == "__main__":
    main()
