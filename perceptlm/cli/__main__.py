"""``python -m perceptlm.cli``: the ``perceptlm`` command."""

import sys

from perceptlm.cli import main

main(sys.argv[1:])
