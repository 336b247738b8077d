"""``python -m das_train``: the command-line entry point.

Until the training framework lands, it runs a short self-check of the hook core on a tiny
model built on the spot (no hub, CPU): an interchange at every GPT-2 component, printed as a
table of how much each changes the next-token distribution.
"""

from das_train.cli_demo import main

if __name__ == "__main__":
    main()
